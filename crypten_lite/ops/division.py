"""Layer L4: floor division and remainder of a secret by a public power of two — the fast path
of :mod:`crypten_lite.ops.rounding` (4 rounds instead of 16 for a general divisor).

``x // 2``, ``x % 2``, ``torch.div(x, 4, rounding_mode="floor")``: the quotient is an integer,
so it must be exact, which ``protocols.division.floor_div_pow2`` is (a truncation and one
comparison). Other divisors would need a secure integer division: they raise, naming the
alternative (``x / d``, a fixed-point quotient). Results follow torch: the floor of the true
quotient, and a remainder with the divisor's sign.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crypten_lite.ops._common import public_of, unsupported, wrap
from crypten_lite.protocols.division import floor_div_pow2
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor

__all__ = ["floor_divide_value", "is_power_of_two_divisor", "remainder_value"]


def is_power_of_two_divisor(y: Any) -> bool:
    """Whether ``y`` is a public scalar ``±2**k`` with ``k <= 40`` (the exact fast path)."""
    value = public_of(y)
    if value is None or value.numel() != 1:
        return False
    v = float(value.flatten()[0])
    if v == 0 or not v.is_integer():
        return False
    d = abs(int(v))
    return d & (d - 1) == 0 and d.bit_length() - 1 <= 40


def _divisor(x: Any, y: Any, what: str) -> tuple[MPCTensor, int, int]:
    """``(x, k, sign)`` for a public divisor ``y = sign * 2**k``; raises for anything else."""
    value = public_of(y)
    party = x.party if isinstance(x, MPCTensor) else y.party
    if not isinstance(x, MPCTensor) or value is None:
        raise unsupported(f"{what} by an encrypted divisor", party)
    if value.numel() != 1 or not bool(value.flatten()[0] == value.flatten()[0].round()):
        raise unsupported(
            f"{what} of an encrypted tensor by "
            f"{value.item() if value.numel() == 1 else f'a tensor of shape {tuple(value.shape)}'}"
            ": only a public integer "
            "divisor ±2**k is supported (exact by a truncation and one comparison); x / d "
            "gives the fixed-point quotient",
            party,
        )
    d = int(value.flatten()[0])
    if d == 0:
        raise unsupported(f"{what} of an encrypted tensor by zero", party)
    k = int(math.log2(abs(d)))
    if abs(d) != 1 << k or k > 40:
        raise unsupported(
            f"{what} of an encrypted tensor by {d}: only public divisors ±2**k are supported "
            "(exact by a truncation and one comparison); x / d gives the fixed-point quotient",
            party,
        )
    return x, k, 1 if d > 0 else -1


def _floor(x: MPCTensor, k: int, sign: int) -> torch.Tensor:
    """Ring shares of ``floor(x / (sign * 2**k))`` at ``x``'s scale."""
    party: Party = x.party
    y = x._share if sign > 0 else -x._share
    q = floor_div_pow2(y.contiguous(), party, x.frac_bits + k)
    return q << x.frac_bits


def floor_divide_value(x: Any, y: Any) -> MPCTensor:
    """``floor(x / y)`` for a public ``y = ±2**k`` (exact)."""
    xs, k, sign = _divisor(x, y, "floor division")
    return wrap(_floor(xs, k, sign), xs.party, dtype=xs.dtype)


def remainder_value(x: Any, y: Any) -> MPCTensor:
    """``x - y * floor(x / y)`` for a public ``y = ±2**k`` (exact; the sign of ``y``)."""
    xs, k, sign = _divisor(x, y, "remainder")
    q = _floor(xs, k, sign)
    return wrap(xs._share - (sign << k) * q, xs.party, dtype=xs.dtype)
