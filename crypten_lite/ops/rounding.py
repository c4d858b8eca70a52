"""Layer L4: ``floor``, ``ceil``, ``trunc``, ``round`` and ``frac`` of encrypted tensors, exact.

They run :mod:`crypten_lite.protocols.rounding` (A2B, a public bit mask, B2A; ``trunc`` and
``round`` add an AND tree over the fraction bits): 8 rounds for ``floor``/``ceil``, 13 for
``trunc``/``round`` (``f = 16``, 2 parties), results exact. ``round`` is torch's half-to-even,
ties included. Integer (int64/bool) encrypted tensors are returned unchanged. The gradient of
each is zero (torch's formulas); ``frac(x) = x - trunc(x)`` has gradient 1.

Division with rounding by a **public** divisor ``y`` — ``x // y``, ``div(rounding_mode=
"floor" / "trunc")``, ``x % y`` (``remainder``, the sign of ``y``) and ``fmod`` (the sign of
``x``) — takes ``q0 = floor(x / y)`` of the truncated quotient and corrects it with the
remainder ``r = x - y q0``, which must lie in ``[0, |y|)``: a comparison against each end.
Exact for integer divisors (and whenever ``|y| q0`` is exact); for other divisors the remainder
carries one truncation (2**-16). Cost (2 parties): 16 rounds (the floor, 8, and two
comparisons), 25 for trunc/fmod (two more comparisons and a product); 3 parties add the
truncation round of ``x / y``. A public scalar divisor ``±2**k`` takes the 4-round exact path of
:mod:`crypten_lite.ops.division` instead. An encrypted divisor raises :class:`~crypten_lite.errors.UnsupportedOperationError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.ops._fixed import add_values, div_values, mul_values, ring_of
from crypten_lite.ops.division import floor_divide_value, is_power_of_two_divisor, remainder_value
from crypten_lite.ops.nonlinear import compare
from crypten_lite.protocols import rounding
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []

Protocol = Callable[[torch.Tensor, Party, int], torch.Tensor]


def _apply(x: MPCTensor, fn: Protocol) -> MPCTensor:
    if x.dtype != torch.float32:
        return wrap(x._share.clone(), x.party, dtype=x.dtype)
    return wrap(fn(x._share.contiguous(), x.party, x.frac_bits), x.party)


@implements(aten.floor.default)
def floor(x: MPCTensor) -> MPCTensor:
    return _apply(x, rounding.floor)


@implements(aten.ceil.default)
def ceil(x: MPCTensor) -> MPCTensor:
    return _apply(x, rounding.ceil)


@implements(aten.trunc.default, aten.fix.default)
def trunc(x: MPCTensor) -> MPCTensor:
    return _apply(x, rounding.trunc)


@implements(aten.round.default)
def round_(x: MPCTensor) -> MPCTensor:
    """Half to even, as torch."""
    return _apply(x, rounding.round_half_even)


@implements(aten.round.decimals)
def round_decimals(x: MPCTensor, *, decimals: int = 0) -> MPCTensor:
    if decimals != 0:
        raise unsupported("round(decimals != 0) (10**-k is not a fixed-point number)", x.party)
    return _apply(x, rounding.round_half_even)


@implements(aten.frac.default)
def frac(x: MPCTensor) -> Any:
    """``x - trunc(x)`` (torch's sign convention: ``frac(-1.5) = -0.5``)."""
    t = _apply(x, rounding.trunc)
    return wrap(x._share - t._share, x.party, dtype=x.dtype)


# --------------------------------------------------------------------------- floor division


def _public_divisor(y: Any, party: Party, what: str) -> torch.Tensor:
    value = public_of(y)
    if value is None:
        raise unsupported(f"{what} by an encrypted divisor (only public divisors)", party)
    if bool((value == 0).any()):
        raise unsupported(f"{what} by zero", party)
    return value.to(torch.float64)


def _floor_quotient(x: MPCTensor, y: torch.Tensor) -> tuple[MPCTensor, MPCTensor, MPCTensor]:
    """``(q, r, sx)`` with ``q = floor(x / y)``, ``sx = sign(y) x`` and ``r = sx - |y| q``.

    ``q0 = floor(sx / |y|)`` from a truncated division can be one off when ``x / y`` lies within
    an ulp of an integer; the remainder ``r0 = sx - |y| q0`` then falls outside ``[0, |y|)`` and
    one comparison against both ends corrects it: ``q = q0 - [r0 < 0] + [r0 >= |y|]``. Exact for
    integer divisors (``|y| q0`` is then a local, exact product).
    """
    party = x.party
    sign, mag = torch.sign(y), y.abs()
    sx = mul_values(x, sign, party)
    t = div_values(sx, mag.to(torch.float32) if mag.dim() else float(mag), party)
    q0 = _apply(t, rounding.floor)
    r0 = add_values(sx, mul_values(q0, mag, party), party, -1)
    low, high = compare("lt", r0, 0.0), compare("ge", r0, mag.to(torch.float32))
    fix = wrap(ring_of(high, party, 0) - ring_of(low, party, 0), party, dtype=torch.int64)
    q = add_values(q0, fix, party)
    r = add_values(r0, mul_values(fix, mag, party), party, -1)
    return q, r, sx


def _trunc_quotient(x: MPCTensor, y: torch.Tensor) -> tuple[MPCTensor, torch.Tensor]:
    """``(trunc(x / y), |y|)``: the floor quotient, plus 1 where ``x / y < 0`` is not whole."""
    party = x.party
    q, r, sx = _floor_quotient(x, y)
    negative, inexact = compare("lt", sx, 0.0), compare("gt", r, 0.0)
    return add_values(q, mul_values(negative, inexact, party), party), y.abs()


def div_rounded(x: Any, y: Any, mode: str | None) -> MPCTensor:
    """``torch.div(x, y, rounding_mode=mode)`` for an encrypted ``x`` and a public ``y``."""
    party = find_party(x, y)
    if mode is None:
        if public_of(y) is not None:
            return div_values(x, y, party)
        quotient: MPCTensor = x / y
        return quotient
    if not isinstance(x, MPCTensor) or public_of(x) is not None:
        raise unsupported(f"division of a public value by an encrypted one ({mode})", party)
    if mode == "floor" and is_power_of_two_divisor(y):
        return floor_divide_value(x, y)
    divisor = _public_divisor(y, party, f"division with rounding_mode={mode!r}")
    if mode == "floor":
        return _floor_quotient(x, divisor)[0]
    if mode == "trunc":
        return _trunc_quotient(x, divisor)[0]
    raise unsupported(f"rounding_mode={mode!r}", party)


@implements(aten.div.Tensor_mode, aten.div.Scalar_mode)
def div_mode(x: Any, y: Any, *, rounding_mode: str | None = None) -> MPCTensor:
    """Floor / trunc division by a public divisor: exact for integer divisors (16 / 25 rounds)."""
    return div_rounded(x, y, rounding_mode)


@implements(aten.floor_divide.default, aten.floor_divide.Scalar)
def floor_divide(x: Any, y: Any) -> MPCTensor:
    """``x // y`` (public ``y``): the floor quotient."""
    return div_rounded(x, y, "floor")


@implements(aten.remainder.Tensor, aten.remainder.Scalar)
def remainder(x: Any, y: Any) -> MPCTensor:
    """``x % y`` (Python's sign convention: the sign of ``y``), public ``y``: ``sign(y) r``."""
    party = find_party(x, y)
    if not isinstance(x, MPCTensor) or public_of(x) is not None:
        raise unsupported("remainder of a public value by an encrypted one", party)
    if is_power_of_two_divisor(y):
        return remainder_value(x, y)
    divisor = _public_divisor(y, party, "remainder")
    _, r, _ = _floor_quotient(x, divisor)
    return mul_values(r, torch.sign(divisor), party)


@implements(aten.fmod.Tensor, aten.fmod.Scalar)
def fmod(x: Any, y: Any) -> MPCTensor:
    """``fmod(x, y)`` (C's sign convention: the sign of ``x``), public ``y``."""
    party = find_party(x, y)
    if not isinstance(x, MPCTensor) or public_of(x) is not None:
        raise unsupported("fmod of a public value by an encrypted one", party)
    divisor = _public_divisor(y, party, "fmod")
    q, _ = _trunc_quotient(x, divisor)
    return add_values(x, mul_values(q, divisor, party), party, -1)
