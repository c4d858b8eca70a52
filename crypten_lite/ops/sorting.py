"""Layer L4: order statistics — sort/argsort, topk, kthvalue, median, cummax/cummin.

All run :mod:`crypten_lite.protocols.sorting` (Batcher's odd-even merge sorting network, or a
prefix scan for ``cummax``/``cummin``) along one dimension, vectorised over the others. Values
stay secret and so do the **indices**: they are secret int64 tensors, carried through the
network as a payload (one extra Beaver round per layer), exactly like ``argmax``'s. Nothing about
the order is revealed.

Cost for a dimension of length ``m`` (``L = ceil(log2 m) (ceil(log2 m) + 1) / 2`` layers, 2
parties; each step ``13.1`` bytes per row and peer, ``+16`` with indices):

==========================  ==============================  ===================================
op                          rounds                          notes
==========================  ==============================  ===================================
``sort``, ``argsort``       ``5 L`` (m = 16: 50)             values and indices
``topk``                    ``5 L``                          a full sort, then the first ``k``
``kthvalue``, ``median``    ``5 L`` (``4 L`` for ``median()``  a full sort, then one position;
                            without dim: no indices)         ``median`` is torch's lower median
``cummax``, ``cummin``      ``5 ceil(log2 m)``               prefix scan
==========================  ==============================  ===================================

Ties: ``sort`` is not stable (equal values may come out in any order of their indices, torch's
``stable=False`` contract; ``stable=True`` is refused); ``cummax``/``cummin`` pick the later
position, as torch does. Values are exact (selection, no truncation).

Backward: torch routes ``sort``/``topk``/``kthvalue``/``median(dim)`` gradients through
``value_selecting_reduction_backward`` and ``cummax``/``cummin`` through ``scatter_add`` with the
secret indices; both place the gradient with a one-hot of the secret indices
(:func:`crypten_lite.ops.reductions.place_at_indices`: one equality comparison of every index
with every position, 4 rounds, then one product round).
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.ops._common import unsupported, wrap
from crypten_lite.protocols import sorting
from crypten_lite.protocols.sharing import share_public
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["sort_along"]


def _positions(shape: torch.Size, party: Party) -> torch.Tensor:
    """Public shares of ``0 .. m-1`` along the last dimension (party 0 holds them)."""
    return share_public(torch.arange(shape[-1]).expand(shape).contiguous(), party)


def sort_along(
    x: MPCTensor, dim: int, descending: bool = False, indices: bool = True
) -> tuple[MPCTensor, MPCTensor | None]:
    """``x.sort(dim, descending)``: secret values and (optionally) secret int64 indices."""
    party = x.party
    if x.dim() == 0:
        zero = wrap(
            share_public(torch.zeros((), dtype=torch.int64), party), party, dtype=torch.int64
        )
        return wrap(x._share.clone(), party, dtype=x.dtype), zero if indices else None
    d = dim % x.dim()
    share = x._share.movedim(d, -1).contiguous()
    if descending:  # sort -x ascending (negation is exact)
        share = -share
    payload = _positions(share.shape, party) if indices else None
    out, moved = sorting.sort(share, party, payload)
    if descending:
        out = -out
    values = wrap(out.movedim(-1, d).contiguous(), party, dtype=x.dtype)
    if moved is None:
        return values, None
    return values, wrap(moved.movedim(-1, d).contiguous(), party, dtype=torch.int64)


def _pick(t: MPCTensor, dim: int, start: int, length: int, keepdim: bool) -> MPCTensor:
    d = dim % max(1, t.dim())
    share = t._share.narrow(d, start, length) if t.dim() else t._share
    if not keepdim and t.dim():
        share = share.squeeze(d)
    return wrap(share.contiguous(), t.party, dtype=t.dtype)


def _refuse_stable(stable: Any, party: Party) -> None:
    if stable:
        raise unsupported(
            "sort(stable=True) on encrypted tensors (the sorting network is not stable; "
            "equal values may come out in any order of their indices)",
            party,
        )


@implements(aten.sort.default)
def sort(x: MPCTensor, dim: int = -1, descending: bool = False) -> tuple[MPCTensor, MPCTensor]:
    """Sorted values and secret indices (argsort calls this)."""
    values, idx = sort_along(x, dim, descending)
    assert idx is not None
    return values, idx


@implements(aten.sort.stable)
def sort_stable(
    x: MPCTensor, *, stable: Any = None, dim: int = -1, descending: bool = False
) -> tuple[MPCTensor, MPCTensor]:
    _refuse_stable(stable, x.party)
    values, idx = sort_along(x, dim, descending)
    assert idx is not None
    return values, idx


@implements(aten.topk.default)
def topk(
    x: MPCTensor,
    k: int,
    dim: int = -1,
    largest: bool = True,
    sorted: bool = True,  # noqa: A002
) -> tuple[MPCTensor, MPCTensor]:
    """The ``k`` largest (smallest) values, always sorted, with secret indices: a full sort."""
    values, idx = sort_along(x, dim, descending=largest)
    assert idx is not None
    return _pick(values, dim, 0, k, True), _pick(idx, dim, 0, k, True)


def _kth(x: MPCTensor, k: int, dim: int, keepdim: bool) -> tuple[MPCTensor, MPCTensor]:
    values, idx = sort_along(x, dim)
    assert idx is not None
    return _pick(values, dim, k - 1, 1, keepdim), _pick(idx, dim, k - 1, 1, keepdim)


@implements(aten.kthvalue.default)
def kthvalue(
    x: MPCTensor, k: int, dim: int = -1, keepdim: bool = False
) -> tuple[MPCTensor, MPCTensor]:
    """The ``k``-th smallest value (1-based) along ``dim`` and its secret index."""
    return _kth(x, k, dim, keepdim)


@implements(aten.median.dim)
def median_dim(x: MPCTensor, dim: int, keepdim: bool = False) -> tuple[MPCTensor, MPCTensor]:
    """torch's lower median (position ``(m - 1) // 2`` of the sorted values) and its index."""
    m = x.shape[dim] if x.dim() else 1
    return _kth(x, (m - 1) // 2 + 1, dim, keepdim)


@implements(aten.median.default)
def median(x: MPCTensor) -> MPCTensor:
    """Lower median of all entries (values only: no index payload, ``4 L`` rounds)."""
    flat = wrap(x._share.reshape(-1), x.party, dtype=x.dtype)
    values, _ = sort_along(flat, 0, indices=False)
    return _pick(values, 0, (flat.numel() - 1) // 2, 1, False)


def _cumulative(x: MPCTensor, dim: int, minimum: bool) -> tuple[MPCTensor, MPCTensor]:
    party = x.party
    if x.dim() == 0:
        return sort_along(x, 0)  # type: ignore[return-value]
    d = dim % x.dim()
    share = x._share.movedim(d, -1).contiguous()
    out, moved = sorting.cumulative_max(
        share, party, _positions(share.shape, party), minimum=minimum
    )
    assert moved is not None
    values = wrap(out.movedim(-1, d).contiguous(), party, dtype=x.dtype)
    return values, wrap(moved.movedim(-1, d).contiguous(), party, dtype=torch.int64)


@implements(aten.cummax.default)
def cummax(x: MPCTensor, dim: int) -> tuple[MPCTensor, MPCTensor]:
    """Prefix maxima and their secret indices (the later position on ties, as torch)."""
    return _cumulative(x, dim, minimum=False)


@implements(aten.cummin.default)
def cummin(x: MPCTensor, dim: int) -> tuple[MPCTensor, MPCTensor]:
    return _cumulative(x, dim, minimum=True)
