"""Layer L4: ``floor``, ``ceil``, ``trunc``, ``round`` and ``frac`` of encrypted tensors, exact.

They run :mod:`crypten_lite.protocols.rounding` (A2B, a public bit mask, B2A; ``trunc`` and
``round`` add an AND tree over the fraction bits): 8 rounds for ``floor``/``ceil``, 13 for
``trunc``/``round`` (``f = 16``, 2 parties), results exact. ``round`` is torch's half-to-even,
ties included. Integer (int64/bool) encrypted tensors are returned unchanged. The gradient of
each is zero (torch's formulas); ``frac(x) = x - trunc(x)`` has gradient 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from crypten_lite.ops._common import unsupported, wrap
from crypten_lite.party import Party
from crypten_lite.protocols import rounding
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
