"""Layer L5: ``with crypten_lite.debug(validate=True) as d:`` — check every op against plaintext.

**Development only: this reveals everything.** Inside the block, every top-level op on encrypted
tensors opens its inputs and outputs to every party, reruns the op in plain torch on the opened
inputs and compares. The first op whose error exceeds its bound is reported (``d.first_failure``;
with ``raise_on_failure=True`` a :class:`ValidationError` is raised at once), which pins down
where a model's encrypted result drifts from the plaintext one: a fixed-point overflow, an
approximation used outside its domain, a wrong protocol.

Bounds, elementwise: an approximation listed in :data:`crypten_lite.protocols.domains.DOMAINS`
(``exp``, ``log``, ``reciprocal``, division by a secret, ``sqrt``, ``rsqrt``, ``sigmoid``,
``tanh``, ``erf``, ``gelu``, ``silu``, ``softmax``, ``log_softmax``, ``sin``, ``cos``) is held
to its documented error there (``abs_error + abs_ulps * 2**-f + rel_error * |expected|``) plus
one ulp for the result's own rounding; when its argument leaves the documented domain the check
says so (``OpCheck.note``, :attr:`DebugReport.outside_domain`) whatever the error. Other ops by
family: exact data movement and sums (a few ulps), products (ulps scaled by the contraction
length), other composites (``2e-2`` absolute and relative). Random ops (dropout masks) are not
checked. Each party runs the same checks (the openings are collective), so use it in a test
session on every party.

This is a debugging mode: revealing every intermediate value to every party is exactly what a
private run must never do; never leave it on with real data.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from crypten_lite.errors import CryptenLiteError
from crypten_lite.protocols.domains import DOMAINS, Domain, allowed_error
from crypten_lite.tensor import _OPS, MPCTensor, OpOverload, current_user_call, observe

__all__ = ["DebugReport", "OpCheck", "ValidationError", "debug"]

aten = torch.ops.aten

# (atol in ulps, rtol) per op family; approximations get an absolute floor too.
_EXACT = (4.0, 1e-6)
_PRODUCT = (64.0, 1e-4)
_APPROX = (0.0, 2e-2)
_APPROX_ATOL = 2e-2
_FAMILY_BOUNDS = {
    "shape": _EXACT,
    "creation": _EXACT,
    "reductions": _PRODUCT,
    "arithmetic": _PRODUCT,
    "linear": _PRODUCT,
    "foreach": _PRODUCT,
    "losses": _APPROX,
    "nonlinear": _APPROX,
    "attention": _APPROX,
}
# aten ops held to a documented error of the domain table (argument 0 is the checked input,
# except for a division, whose divisor is).
_DOCUMENTED = {
    aten.exp.default: "exp",
    aten.log.default: "log",
    aten.reciprocal.default: "reciprocal",
    aten.div.Tensor: "div",
    aten.sqrt.default: "sqrt",
    aten.rsqrt.default: "inv_sqrt",
    aten.sigmoid.default: "sigmoid",
    aten.tanh.default: "tanh",
    aten.erf.default: "erf",
    aten.gelu.default: "gelu",
    aten.silu.default: "silu",
    aten._softmax.default: "softmax",
    aten._log_softmax.default: "log_softmax",
    aten.sin.default: "sin",
    aten.cos.default: "cos",
}
_RANDOM = {
    aten.bernoulli_.float,
    aten.bernoulli.p,
    aten.uniform_.default,
    aten.normal_.default,
    aten.rand_like.default,
    aten.randn_like.default,
}


class ValidationError(CryptenLiteError, AssertionError):
    """An encrypted op's result is further from the plaintext result than its bound."""


@dataclass(frozen=True)
class OpCheck:
    """One checked op: the largest error found and the bound it was held to."""

    op: str
    call: str | None
    max_error: float
    bound: float
    ok: bool
    note: str = ""

    def __str__(self) -> str:
        where = f" (from {self.call})" if self.call else ""
        verdict = "ok" if self.ok else "EXCEEDS BOUND"
        note = f" [{self.note}]" if self.note else ""
        return (
            f"{self.op}{where}: max error {self.max_error:.3g}, bound {self.bound:.3g} "
            f"{verdict}{note}"
        )


@dataclass
class DebugReport:
    """Every op checked inside :func:`debug`, and the first that failed."""

    checks: list[OpCheck] = field(default_factory=list)
    raise_on_failure: bool = False

    @property
    def first_failure(self) -> OpCheck | None:
        return next((c for c in self.checks if not c.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_failure is None

    @property
    def outside_domain(self) -> list[OpCheck]:
        """The checked approximations whose argument left the documented domain."""
        return [c for c in self.checks if c.note]

    def __str__(self) -> str:
        bad = self.first_failure
        head = f"debug: {len(self.checks)} ops checked, " + (
            "all within bounds" if bad is None else f"first failure: {bad}"
        )
        outside = self.outside_domain
        if outside:
            head += f"; {len(outside)} outside their documented domain, first: {outside[0]}"
        return head

    # ----------------------------------------------------------------- observer protocol
    def before(self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if func in _RANDOM:
            return None
        return _reveal_tree((args, kwargs)), current_user_call()

    def after(
        self,
        token: Any,
        func: OpOverload,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
    ) -> None:
        if token is None:
            return
        (plain_args, plain_kwargs), call = token
        # For in-place ops this writes the opened copy of the target, which is what we want.
        expected = func(*plain_args, **plain_kwargs)
        got = _reveal_tree(out)
        entry = _OPS.get(func)
        family = entry.family if entry is not None else "arithmetic"
        atol_ulps, rtol = _FAMILY_BOUNDS.get(family, _PRODUCT)
        frac = _frac_of((args, kwargs))
        ulp = 2.0**-frac
        atol = atol_ulps * ulp * _contraction(func, args)
        if rtol >= _APPROX[1]:
            atol += _APPROX_ATOL
        domain, note = _documented(func, args, plain_args)
        worst, bound, ok = 0.0, atol, True
        for g, e in zip(tree_flatten(got)[0], tree_flatten(expected)[0], strict=False):
            if not (isinstance(g, torch.Tensor) and isinstance(e, torch.Tensor)):
                continue
            if not (g.is_floating_point() and e.is_floating_point()) or g.shape != e.shape:
                continue
            e64, g64 = e.double(), g.double()
            finite = torch.isfinite(e64)
            if not bool(finite.any()):
                continue
            err = (g64[finite] - e64[finite]).abs()
            if domain is not None:  # the documented error, plus the result's own rounding
                allowed = allowed_error(domain, e64[finite], frac) + ulp
            else:
                allowed = atol + rtol * e64[finite].abs()
            excess = err - allowed
            i = int(excess.argmax())
            if ok and float(excess[i]) > 0:
                ok, worst, bound = False, float(err[i]), float(allowed[i])
            elif ok:
                worst = max(worst, float(err.max()))
                bound = max(bound, float(allowed.max()))
        check = OpCheck(str(func), call, worst, bound, ok, note)
        self.checks.append(check)
        if not check.ok and self.raise_on_failure:
            raise ValidationError(f"debug(validate=True): {check}")


def _reveal_tree(tree: Any) -> Any:
    def one(x: Any) -> Any:
        if isinstance(x, MPCTensor):
            plain = x.get_plain_text()
            assert plain is not None
            return plain
        if isinstance(x, torch.Tensor):
            return x.detach().clone()
        return x

    return tree_map(one, tree)


def _documented(
    func: OpOverload, args: tuple[Any, ...], plain_args: tuple[Any, ...]
) -> tuple[Domain | None, str]:
    """The domain-table row ``func`` is held to, and a note if its argument leaves it."""
    name = _DOCUMENTED.get(func)
    if name is None:
        return None, ""
    index = 0
    if name == "div":
        # Only a division by a secret runs the reciprocal protocol; by a public value it is a
        # product (family bound).
        if len(args) < 2 or not isinstance(args[1], MPCTensor):
            return None, ""
        index = 1
    domain = DOMAINS[name]
    x = plain_args[index] if len(plain_args) > index else None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        return domain, ""
    if domain.max_row is not None:
        dim = int(plain_args[1]) if len(plain_args) > 1 else -1
        n = x.shape[dim] if x.dim() else 1
        if n > domain.max_row:
            return domain, f"{name} over rows of {n}, documented for {domain.describe()}"
    outside = ~domain.inside(x.detach().double())
    if bool(outside.any()):
        return domain, (
            f"{int(outside.sum())} of {x.numel()} arguments outside {name}'s domain "
            f"{domain.describe()}"
        )
    return domain, ""


def _frac_of(tree: Any) -> int:
    for leaf in tree_flatten(tree)[0]:
        if isinstance(leaf, MPCTensor) and leaf.dtype == torch.float32:
            return leaf.frac_bits
    return 16


def _contraction(func: OpOverload, args: tuple[Any, ...]) -> float:
    """How many products each output sums (matmul inner size, conv fan-in); 1 otherwise."""
    name = str(func)
    try:
        if name.startswith(("aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm")):
            a = args[1] if name.startswith(("aten.addmm", "aten.baddbmm")) else args[0]
            return float(a.shape[-1])
        if name.startswith("aten.convolution"):
            w = args[1] if name == "aten.convolution.default" else args[2]
            return float(math.prod(w.shape[1:]))
    except (AttributeError, IndexError, TypeError):
        return 1.0
    return 1.0


@contextlib.contextmanager
def debug(validate: bool = True, *, raise_on_failure: bool = False) -> Iterator[DebugReport]:
    """Check every encrypted op inside the block against plain torch. REVEALS EVERYTHING.

    Args:
        validate: when ``False`` the block runs normally (so the call can stay in code).
        raise_on_failure: raise :class:`ValidationError` at the first op out of bounds, instead
            of recording it in the report.
    """
    report = DebugReport(raise_on_failure=raise_on_failure)
    if not validate:
        yield report
        return
    with observe(report):
        yield report
