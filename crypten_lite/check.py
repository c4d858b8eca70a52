"""Layer L5: ``check_model(model, example_input)`` — every gap of a model, in one run.

The model runs once (forward and, by default, backward) on *fake* encrypted tensors
(:func:`crypten_lite.tensor.fake_mode`): stand-ins that compute on the plaintext, need no parties
and send no messages, but go through the same dispatch table as real encrypted tensors. Every
aten op without an MPC implementation, every call with unsupported arguments and every attempt to
read a secret (``bool()``, ``.item()``) is recorded instead of raised, so the report lists all of
them at once, each with the user-level call that produced it.

With ``domain=True`` (the default) the model also runs once in plaintext on the example input,
and the report lists every place where values leave a protocol's documented domain or the
ring's headroom (:mod:`crypten_lite.domain_report`, reading the table of
:mod:`crypten_lite.protocols.domains`): ``report.domain``. ``report.ok`` still means "every op
is supported"; ``report.numerics_ok`` means the example input stays inside every domain.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import crypten_lite.ops  # noqa: F401 - fills the op table
from crypten_lite.config import config_from_env
from crypten_lite.domain_report import DomainIssue, domain_report
from crypten_lite.tensor import FakeSession, MPCTensor, fake_mode

__all__ = ["CheckReport", "DomainIssue", "Gap", "check_model"]


@dataclass(frozen=True)
class Gap:
    """One thing the model needs that encrypted tensors do not support.

    Attributes:
        op: the aten op (``aten.erfinv.default``), or the leaking call (``bool()``), or
            ``error``.
        detail: the user-level call it came from, or why it is not supported.
    """

    op: str
    detail: str

    def __str__(self) -> str:
        return f"{self.op}  <- {self.detail}"


@dataclass
class CheckReport:
    """The result of :func:`check_model`: ``ok`` when ``gaps`` is empty; ``domain`` lists
    where the plaintext run on the example input leaves a documented domain."""

    gaps: list[Gap] = field(default_factory=list)
    domain: list[DomainIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every op the model needs is supported on encrypted tensors."""
        return not self.gaps

    @property
    def numerics_ok(self) -> bool:
        """The example input keeps every value inside the documented domains and headroom."""
        return not self.domain

    @property
    def ops(self) -> list[str]:
        """The unsupported op names, each once, in order of first use."""
        return list(dict.fromkeys(g.op for g in self.gaps))

    def __str__(self) -> str:
        if self.ok:
            lines = ["check_model: every op is supported on encrypted tensors"]
        else:
            lines = [f"check_model: {len(self.ops)} unsupported op(s):"]
            lines += [f"  {g}" for g in self.gaps]
        if self.domain:
            lines.append(
                f"check_model: {len(self.domain)} place(s) outside a documented domain "
                "(on the example input):"
            )
            lines += [f"  {d}" for d in self.domain]
        return "\n".join(lines)


def _fake(value: Any, requires_grad: bool = False) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return MPCTensor.fake(value, requires_grad=requires_grad)
    return value


def _fake_module(model: torch.nn.Module) -> torch.nn.Module:
    fake = copy.deepcopy(model)
    for sub in fake.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_floating_point():
                sub._parameters[name] = torch.nn.Parameter(
                    MPCTensor.fake(p.detach(), requires_grad=p.requires_grad),
                    requires_grad=p.requires_grad,
                )
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_floating_point():
                sub._buffers[name] = MPCTensor.fake(b)
    return fake


def check_model(
    model: torch.nn.Module,
    example_input: Any,
    *,
    encrypt_model: bool = True,
    encrypt_input: bool = True,
    backward: bool = True,
    frac_bits: int = 16,
    domain: bool = True,
    truncation: str | None = None,
) -> CheckReport:
    """List every unsupported op the model needs on encrypted data, in one run.

    Args:
        model: any ``torch.nn.Module`` (not modified: a copy runs).
        example_input: one tensor or a tuple of positional inputs of realistic shapes;
            floating tensors are made encrypted, integer tensors (indices, labels) stay public.
        encrypt_model: run with encrypted parameters and buffers (else a plaintext model).
        encrypt_input: run with encrypted inputs (else plaintext inputs).
        backward: also run ``output.sum().backward()`` to check the gradient ops.
        frac_bits: the precision the fake tensors pretend to have.
        domain: also run the model in plaintext on the example input and list where values
            leave a protocol's domain or the ring's headroom (``report.domain``).
        truncation: the truncation method to account for (default: the environment's,
            ``CRYPTEN_LITE_TRUNCATION``); with ``local`` the report lists modules whose
            products expect at least ``1e-6`` local truncation failures per pass.

    Returns:
        A :class:`CheckReport`; ``print(report)`` lists the gaps with the calls they came from.
    """
    inputs: Sequence[Any] = example_input if isinstance(example_input, tuple) else (example_input,)
    session = FakeSession(frac_bits=frac_bits)
    report = CheckReport()
    with fake_mode(session):
        net = _fake_module(model) if encrypt_model else copy.deepcopy(model)
        args = [_fake(a) if encrypt_input else a for a in inputs]
        try:
            out = net(*args)
            if backward:
                first = out[0] if isinstance(out, (tuple, list)) else out
                if isinstance(first, torch.Tensor) and first.requires_grad:
                    first.float().sum().backward()  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the point is a list
            session.record("error", f"{type(exc).__name__}: {exc}")
    report.gaps = [Gap(op, detail) for op, detail in session.gaps]
    if domain:
        method = config_from_env().truncation if truncation is None else truncation
        try:
            report.domain = domain_report(model, inputs, frac_bits=frac_bits, truncation=method)
        except Exception as exc:  # noqa: BLE001 - reported: the fake run may have listed why
            report.domain = [
                DomainIssue(type(model).__name__, "model", "plaintext run", f"{exc!r}")
            ]
    return report
