"""Layer L4: the per-context state of :class:`~crypten_lite.tensor.MPCTensor` dispatch.

Observers (:func:`observe`) see every top-level op: the profiler and the validating debugger of
the user layer hook in here. :func:`fake_mode` runs ops on plaintext stand-ins instead of shares
and records every unsupported op instead of raising (``crypten_lite.check_model``). The
user-level torch call being run (:func:`current_user_call`) names the culprit in error messages.

All of it lives in ``contextvars``, so N parties running as N threads keep separate state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from crypten_lite.tensor_table import OpOverload

__all__ = ["FakeSession", "OpObserver", "current_user_call", "fake_mode", "observe"]


class OpObserver(Protocol):
    """Sees every top-level op on encrypted tensors (ops inside other ops are not reported)."""

    def before(self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called before the op runs; the return value is passed to :meth:`after`."""

    def after(
        self,
        token: Any,
        func: OpOverload,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
    ) -> None:
        """Called after the op ran, with its output."""


_OBSERVERS: ContextVar[tuple[OpObserver, ...]] = ContextVar("crypten_lite_observers", default=())
_DEPTH: ContextVar[int] = ContextVar("crypten_lite_dispatch_depth", default=0)
_USER_CALL: ContextVar[str | None] = ContextVar("crypten_lite_user_call", default=None)


@contextlib.contextmanager
def observe(observer: OpObserver) -> Iterator[OpObserver]:
    """Report every top-level op on encrypted tensors to ``observer`` inside the block."""
    token = _OBSERVERS.set((*_OBSERVERS.get(), observer))
    try:
        yield observer
    finally:
        _OBSERVERS.reset(token)


def current_user_call() -> str | None:
    """The user-level torch call being executed (``torch.nn.functional.conv2d``), if known."""
    return _USER_CALL.get()


def _call_name(func: Callable[..., Any]) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    qual = getattr(func, "__qualname__", name)
    module = getattr(func, "__module__", None)
    if qual.startswith(("TensorBase.", "Tensor.")):
        return "Tensor." + qual.split(".", 1)[1]
    if module in ("torch._C._nn", "torch._C._special", "torch._C._linalg"):
        module = {"torch._C._nn": "torch.nn.functional", "torch._C._special": "torch.special"}.get(
            module, "torch.linalg"
        )
    if module and module.startswith("torch"):
        return f"{module}.{name}"
    return qual


# --------------------------------------------------------------------------- fake mode


@dataclass
class FakeSession:
    """Records what :func:`fake_mode` found: unsupported ops and secret reads, first seen first.

    Attributes:
        gaps: ``(what, detail)`` pairs, each once: ``what`` is an aten op name or a leaking
            call, ``detail`` the user-level call or the reason.
        frac_bits: encoding precision the fake tensors pretend to use.
    """

    gaps: list[tuple[str, str]] = field(default_factory=list)
    frac_bits: int = 16

    def record(self, what: str, detail: str) -> None:
        if (what, detail) not in self.gaps:
            self.gaps.append((what, detail))


_FAKE: ContextVar[FakeSession | None] = ContextVar("crypten_lite_fake", default=None)


@contextlib.contextmanager
def fake_mode(session: FakeSession | None = None) -> Iterator[FakeSession]:
    """Run ops on fake encrypted tensors: plaintext stand-ins, no parties, no messages.

    Inside the block, :meth:`MPCTensor.fake` tensors compute on their plaintext and every op
    without an MPC implementation (or with unsupported arguments) is recorded in the session
    instead of raised, so one run lists every gap of a model.
    """
    session = session or FakeSession()
    token = _FAKE.set(session)
    try:
        yield session
    finally:
        _FAKE.reset(token)
