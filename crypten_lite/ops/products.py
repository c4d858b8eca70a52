"""Layer L4: products over a dimension — ``prod`` and ``cumprod``, forward and backward.

Both are Beaver products arranged so that a whole tree level (``prod``) or scan step
(``cumprod``) is one vectorised multiplication, i.e. one round:

* ``prod`` over ``m`` entries multiplies pairs level by level (a binary tree): ``ceil(log2 m)``
  rounds, ``m - 1`` products in all; an odd level passes its last entry up unchanged.
* ``cumprod`` is the Hillis-Steele inclusive scan: at step ``k = 1, 2, 4, ...`` entry ``i``
  becomes ``y[i] * y[i - k]`` for ``i >= k``: ``ceil(log2 m)`` rounds, ``m - k`` products each.

Each product of fixed-point values is truncated, so the relative error grows with the number of
factors: about ``depth * 2**-f`` relative to the largest partial product (``f = 16``); products of
many entries larger than 1 overflow the fixed-point range (``|value| < 2**(63 - 2f)``, about
``2**31``) just as any other product would. With two parties one product costs 1 round and 16
bytes per element to the peer; three parties add the dealer-assisted truncation round.

Backward: torch's ``prod`` backward for tensor subclasses is the zero-safe formula built on
exclusive ``cumprod`` from both ends (no division, so entries equal to 0 are fine), which
runs on these ops.
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.ops._common import wrap
from crypten_lite.ops._fixed import mul_values, out_frac, ring_of
from crypten_lite.protocols.sharing import share_public
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["cumprod_value", "prod_value"]


def _ones(shape: tuple[int, ...], party: Party, frac: int) -> torch.Tensor:
    return share_public(torch.full(shape, 1 << frac, dtype=torch.int64), party)


def prod_value(x: MPCTensor, dim: int, keepdim: bool = False) -> MPCTensor:
    """``x.prod(dim)`` by a product tree: ``ceil(log2 m)`` rounds."""
    party = x.party
    d = dim % max(1, x.dim())
    dtype = x.dtype if x.dtype != torch.bool else torch.int64
    frac = out_frac(dtype, party)
    level = ring_of(x, party, frac).movedim(d, -1) if x.dim() else ring_of(x, party, frac)[None]
    while level.shape[-1] > 1:
        m = level.shape[-1]
        half = m // 2
        left = wrap(level[..., : 2 * half : 2].contiguous(), party, dtype=dtype)
        right = wrap(level[..., 1 : 2 * half : 2].contiguous(), party, dtype=dtype)
        paired = mul_values(left, right, party)._share
        level = torch.cat([paired, level[..., 2 * half :]], -1) if m % 2 else paired
    if level.shape[-1] == 0:  # the empty product
        level = _ones((*level.shape[:-1], 1), party, frac)
    out = level.squeeze(-1)
    if keepdim and x.dim():
        out = out.unsqueeze(d)
    return wrap(out, party, dtype=dtype)


def cumprod_value(x: MPCTensor, dim: int) -> MPCTensor:
    """Inclusive prefix products along ``dim`` (Hillis-Steele scan): ``ceil(log2 m)`` rounds."""
    party = x.party
    if x.dim() == 0:
        return wrap(x._share.clone(), party, dtype=x.dtype)
    d = dim % x.dim()
    dtype = x.dtype if x.dtype != torch.bool else torch.int64
    frac = out_frac(dtype, party)
    y = ring_of(x, party, frac).movedim(d, -1)
    m, k = y.shape[-1], 1
    while k < m:
        late = wrap(y[..., k:].contiguous(), party, dtype=dtype)
        early = wrap(y[..., : m - k].contiguous(), party, dtype=dtype)
        y = torch.cat([y[..., :k], mul_values(late, early, party)._share], -1)
        k *= 2
    return wrap(y.movedim(-1, d).contiguous(), party, dtype=dtype)


@implements(aten.prod.default)
def prod(x: MPCTensor, *, dtype: Any = None) -> MPCTensor:
    """Product of all entries (flattened tree)."""
    flat = wrap(x._share.reshape(-1), x.party, dtype=x.dtype)
    return prod_value(flat, 0)


@implements(aten.prod.dim_int)
def prod_dim(x: MPCTensor, dim: int, keepdim: bool = False, *, dtype: Any = None) -> MPCTensor:
    return prod_value(x, dim, keepdim)


@implements(aten.cumprod.default)
def cumprod(x: MPCTensor, dim: int, *, dtype: Any = None) -> MPCTensor:
    return cumprod_value(x, dim)
