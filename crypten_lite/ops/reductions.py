"""Layer L4: reductions — sum, mean, cumsum, variance, max/min/argmax over a dimension.

Sums of shares are shares of sums, so ``sum`` and ``cumsum`` are local and exact; ``mean`` adds a
division by the public element count (one truncation); ``var`` a square (one Beaver round).
``max``/``min``/``argmax`` use ``protocols.reduction`` (a comparison tree); indices come back as
secret int64 tensors carrying the one-hot of the winner for the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.ops._fixed import add_values, div_values, mul_values
from crypten_lite.ops.nonlinear import compare
from crypten_lite.protocols import reduction
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = [
    "ONEHOT_KEY",
    "max_with_onehot",
    "mean_value",
    "place_at_indices",
    "reduce_count",
    "secret_indices",
]


def _sum_dtype(x: MPCTensor) -> torch.dtype:
    return torch.int64 if x.dtype == torch.bool else x.dtype


def _dims(x: MPCTensor, dim: Any) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    if isinstance(dim, int):
        dim = [dim]
    dims = [d % max(1, x.dim()) for d in dim]
    return dims or list(range(x.dim()))


def reduce_count(x: Any, dim: Any) -> int:
    """Number of elements each output of a reduction over ``dim`` sums."""
    count = 1
    for d in _dims(x, dim):
        count *= x.shape[d] if x.dim() else 1
    return count


@implements(aten.sum.default)
def sum_all(x: MPCTensor, *, dtype: torch.dtype | None = None) -> MPCTensor:
    return wrap(x._share.sum(), x.party, dtype=_sum_dtype(x))


@implements(aten.sum.dim_IntList)
def sum_dim(
    x: MPCTensor, dim: Any, keepdim: bool = False, *, dtype: torch.dtype | None = None
) -> MPCTensor:
    share = x._share.sum(_dims(x, dim), keepdim=keepdim) if x.dim() else x._share.clone()
    return wrap(share, x.party, dtype=_sum_dtype(x))


@implements(aten.cumsum.default)
def cumsum(x: MPCTensor, dim: int, *, dtype: torch.dtype | None = None) -> MPCTensor:
    return wrap(x._share.cumsum(dim), x.party, dtype=_sum_dtype(x))


@implements(aten.trace.default)
def trace(x: MPCTensor) -> MPCTensor:
    return wrap(x._share.trace(), x.party, dtype=_sum_dtype(x))


def mean_value(x: MPCTensor, dim: Any = None, keepdim: bool = False) -> MPCTensor:
    """``x.mean(dim)``: the local sum divided by the public count (one truncation)."""
    total = sum_dim(x, dim, keepdim)
    return div_values(total, reduce_count(x, dim), x.party)


@implements(aten.mean.default)
def mean(x: MPCTensor, *, dtype: torch.dtype | None = None) -> MPCTensor:
    return mean_value(x)


@implements(aten.mean.dim)
def mean_dim(
    x: MPCTensor, dim: Any, keepdim: bool = False, *, dtype: torch.dtype | None = None
) -> MPCTensor:
    return mean_value(x, dim, keepdim)


def _var(x: MPCTensor, dim: Any, correction: Any, keepdim: bool) -> tuple[MPCTensor, MPCTensor]:
    party = x.party
    mu = mean_value(x, dim, keepdim=True)
    centred = add_values(x, mu, party, -1)
    sq = mul_values(centred, centred, party)
    total = sum_dim(sq, dim, keepdim)
    corr = 1 if correction is None else correction
    count = reduce_count(x, dim) - corr
    var = div_values(total, max(count, 1) if isinstance(count, int) else count, party)
    if not keepdim:
        mu = sum_dim(mu, dim, keepdim=False)  # drop the kept dims (one element each)
    return var, mu


@implements(aten.var.correction)
def var(
    x: MPCTensor,
    dim: Sequence[int] | None = None,
    *,
    correction: Any = None,
    keepdim: bool = False,
) -> MPCTensor:
    """Variance (``correction=1`` by default, as torch): one square round, one division."""
    return _var(x, dim, correction, keepdim)[0]


@implements(aten.var_mean.correction)
def var_mean(
    x: MPCTensor,
    dim: Sequence[int] | None = None,
    *,
    correction: Any = None,
    keepdim: bool = False,
) -> tuple[MPCTensor, MPCTensor]:
    return _var(x, dim, correction, keepdim)


# --------------------------------------------------------------------------- max, min, argmax

ONEHOT_KEY = "argmax:one_hot"


def secret_indices(onehot: torch.Tensor, dim: int, party: Party) -> MPCTensor:
    """Secret int64 indices ``sum_k k * onehot[..., k, ...]`` along ``dim`` (local), keeping the
    one-hot (scale-0 shares) stashed for the backward pass."""
    m = onehot.shape[dim]
    shape = [1] * onehot.dim()
    shape[dim] = m
    idx = (onehot * torch.arange(m).reshape(shape)).sum(dim)
    out = wrap(idx, party, dtype=torch.int64)
    out.stash(ONEHOT_KEY, (dim, onehot))
    return out


def max_with_onehot(
    x: MPCTensor, dim: int, keepdim: bool, minimum: bool = False
) -> tuple[MPCTensor, torch.Tensor]:
    """``(max or min over dim, its one-hot share)`` by ``protocols.reduction``."""
    party = x.party
    fn = reduction.min_dim if minimum else reduction.max_dim
    values, onehot = fn(x._share.contiguous(), party, dim, keepdim, onehot=True)
    assert onehot is not None
    return wrap(values, party, dtype=x.dtype), onehot


def _max_dim(x: MPCTensor, dim: int, keepdim: bool, minimum: bool) -> tuple[MPCTensor, MPCTensor]:
    d = dim % max(1, x.dim())
    values, onehot = max_with_onehot(x, d, keepdim, minimum)
    idx = secret_indices(onehot, d, x.party)
    if keepdim:
        idx = wrap(idx._share.unsqueeze(d), x.party, dtype=torch.int64)
        idx.stash(ONEHOT_KEY, (d, onehot))
    return values, idx


@implements(aten.max.dim)
def max_dim(x: MPCTensor, dim: int, keepdim: bool = False) -> tuple[MPCTensor, MPCTensor]:
    """Values and secret indices (the one-hot is stashed on the indices for the backward)."""
    return _max_dim(x, dim, keepdim, minimum=False)


@implements(aten.min.dim)
def min_dim(x: MPCTensor, dim: int, keepdim: bool = False) -> tuple[MPCTensor, MPCTensor]:
    return _max_dim(x, dim, keepdim, minimum=True)


@implements(aten.max.default)
def max_all(x: MPCTensor) -> MPCTensor:
    return max_with_onehot(wrap(x._share.reshape(-1), x.party, dtype=x.dtype), 0, False)[0]


@implements(aten.min.default)
def min_all(x: MPCTensor) -> MPCTensor:
    flat = wrap(x._share.reshape(-1), x.party, dtype=x.dtype)
    return max_with_onehot(flat, 0, False, minimum=True)[0]


def _amax(x: MPCTensor, dim: Any, keepdim: bool, minimum: bool) -> Any:
    dims = _dims(x, dim if dim != () else None)
    if len(dims) == 1:
        return max_with_onehot(x, dims[0], keepdim, minimum)[0]
    if sorted(dims) != list(range(x.dim())):
        raise unsupported("amax/amin over several (not all) dimensions", x.party)
    flat = wrap(x._share.reshape(-1), x.party, dtype=x.dtype)
    out = max_with_onehot(flat, 0, False, minimum)[0]
    return out.reshape([1] * x.dim()) if keepdim else out


@implements(aten.amax.default)
def amax(x: MPCTensor, dim: Any = (), keepdim: bool = False) -> Any:
    """Max over one dimension or all of them."""
    return _amax(x, dim, keepdim, minimum=False)


@implements(aten.amin.default)
def amin(x: MPCTensor, dim: Any = (), keepdim: bool = False) -> Any:
    return _amax(x, dim, keepdim, minimum=True)


def _argmax(x: MPCTensor, dim: int | None, keepdim: bool, minimum: bool) -> MPCTensor:
    if dim is None:
        x = wrap(x._share.reshape(-1), x.party, dtype=x.dtype)
        dim = 0
    return _max_dim(x, dim, keepdim, minimum)[1]


@implements(aten.argmax.default)
def argmax(x: MPCTensor, dim: int | None = None, keepdim: bool = False) -> MPCTensor:
    """Secret index of the max (torch's convention: the first on ties; flattened if no dim)."""
    return _argmax(x, dim, keepdim, minimum=False)


@implements(aten.argmin.default)
def argmin(x: MPCTensor, dim: int | None = None, keepdim: bool = False) -> MPCTensor:
    return _argmax(x, dim, keepdim, minimum=True)


@implements(aten.value_selecting_reduction_backward.default)
def value_selecting_reduction_backward(
    grad: Any, dim: int, indices: Any, sizes: Any, keepdim: bool
) -> MPCTensor:
    """``grad`` placed at the argmax: ``one_hot * grad`` (no truncation: the one-hot has
    scale 0; local when ``grad`` is public)."""
    party = find_party(grad, indices)
    stashed = indices.stashed(ONEHOT_KEY) if isinstance(indices, MPCTensor) else None
    d = dim % len(sizes)
    if stashed is None:
        idx = public_of(indices)
        if idx is None:  # secret indices of sort/topk/kthvalue/median: a one-hot by comparisons
            g = grad if keepdim else grad.unsqueeze(d)
            i = indices if keepdim else indices.unsqueeze(d)
            return place_at_indices(g, i, d, int(sizes[d]))
        onehot = torch.zeros(list(sizes), dtype=torch.int64).scatter(
            d, idx if keepdim else idx.unsqueeze(d), 1
        )
        g = grad if keepdim else grad.unsqueeze(d)
        return mul_values(g, onehot, party)
    _, onehot = stashed
    g = grad if keepdim else grad.unsqueeze(d)
    return mul_values(g, wrap(onehot, party, dtype=torch.int64), party)


def place_at_indices(values: Any, indices: MPCTensor, dim: int, size: int) -> MPCTensor:
    """``zeros(...).scatter_add(dim, indices, values)`` for **secret** int64 ``indices``.

    Output position ``i`` along ``dim`` (of length ``size``) receives
    ``sum_k values[k] * [indices[k] == i]``: every index is compared with every position (one
    equality comparison of ``k * size`` entries per row, 4 rounds), then one product round with
    the 0/1 one-hot (scale 0: no truncation) and a local sum. The backward of ``sort``,
    ``topk``, ``kthvalue``, ``median(dim)`` and ``cummax``/``cummin``.
    """
    party = indices.party
    d = dim % max(1, indices.dim())
    idx = wrap(indices._share.movedim(d, -1).unsqueeze(-1).contiguous(), party, dtype=torch.int64)
    onehot = compare("eq", idx, torch.arange(size))  # (..., k, size)
    vals: Any = values
    if isinstance(values, MPCTensor):
        vals = wrap(values._share.movedim(d, -1).unsqueeze(-1), party, dtype=values.dtype)
        pub = values.public_value()
        if pub is not None:
            vals = pub.movedim(d, -1).unsqueeze(-1)
    elif isinstance(values, torch.Tensor):
        vals = values.movedim(d, -1).unsqueeze(-1)
    placed = mul_values(vals, onehot, party)
    return wrap(placed._share.sum(-2).movedim(-1, d).contiguous(), party, dtype=placed.dtype)


@implements(aten.var.dim)
def var_dim(
    x: MPCTensor, dim: Sequence[int] | None = None, unbiased: bool = True, keepdim: bool = False
) -> MPCTensor:
    """``var(dim, unbiased)`` (the older signature): as ``var.correction``."""
    return _var(x, dim, 1 if unbiased else 0, keepdim)[0]
