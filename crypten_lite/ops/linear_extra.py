"""Layer L4: ``nn.Bilinear`` (``aten._trilinear``) and ``nn.EmbeddingBag`` (``_embedding_bag``).

* ``_trilinear(i1, i2, i3, expand1, expand2, expand3, sumdim)`` is the sum over ``sumdim`` of
  the product of three tensors broadcast over the positions named by ``expand*``: an einsum in
  which each operand carries the letters of the dimensions it does not expand. It runs as two
  pairwise contractions (two Beaver rounds between secrets; local with public operands), and
  its backward, which torch writes with ``_trilinear`` again, too.
* ``_embedding_bag`` with *public* indices and offsets (the usual case: token ids) is a public
  linear map of the gathered rows: with the bag-membership matrix ``M`` (bags x positions,
  padding excluded), ``sum = M @ rows`` (exact, local), ``mean`` divides by the public bag
  sizes (one truncation), ``per_sample_weights`` scale the rows first (one product when they
  are secret). ``max`` pads every bag to the longest with a large negative public value and
  takes a secret max over the bag axis (a comparison tree), keeping the one-hot of the winner
  for the backward; empty bags give 0 as in torch. The weight gradient is the transposed map
  (exact, local), for ``max`` the one-hot times the gradient (no truncation).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.ops._fixed import (
    bilinear_values,
    div_values,
    mul_values,
    where_values,
    wrap_public,
)
from crypten_lite.ops.reductions import max_with_onehot
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []


# --------------------------------------------------------------------------- _trilinear


@implements(aten._trilinear.default)
def trilinear(
    i1: Any,
    i2: Any,
    i3: Any,
    expand1: Sequence[int],
    expand2: Sequence[int],
    expand3: Sequence[int],
    sumdim: Sequence[int],
    unroll_dim: int = 1,
) -> Any:
    """``sum_{sumdim} i1' * i2' * i3'`` (``ik'`` = ``ik`` unsqueezed at ``expandk``), as an
    einsum (see the module docstring). ``unroll_dim`` is a CPU-kernel hint only."""
    total = i1.dim() + len(expand1)
    letters = string.ascii_letters[:total]
    specs = []
    for expand in (expand1, expand2, expand3):
        gone = {d % total for d in expand}
        specs.append("".join(letters[d] for d in range(total) if d not in gone))
    summed = {d % total for d in sumdim}
    out = "".join(letters[d] for d in range(total) if d not in summed)
    # inside the dispatch table composite ops arrive undecomposed: run einsum's own
    # decomposition (permutes, reshapes and bmm, which the table implements)
    equation = f"{specs[0]},{specs[1]},{specs[2]}->{out}"
    return aten.einsum.default.decompose(equation, [i1, i2, i3])


# --------------------------------------------------------------------------- embedding bag

_SUM, _MEAN, _MAX = 0, 1, 2
_PAD_VALUE = -(2.0**20)
"""Value of the padding slots of a ``max`` bag: below any value an encrypted weight holds in
practice, and far inside the ring (comparisons stay exact)."""
_MAX_KEY = "embedding_bag:one_hot"


def _check_bag(weight: Any, indices: Any, offsets: Any, *args: Any, **kwargs: Any) -> str | None:
    if public_of(indices) is None or public_of(offsets) is None:
        return "EmbeddingBag with encrypted indices or offsets (they must be public)"
    return None


def _membership(
    idx: torch.Tensor, bag_of: torch.Tensor, bags: int, padding_idx: int
) -> torch.Tensor:
    """``M[b, i] = 1`` when position ``i`` belongs to bag ``b`` and is not padding (int64)."""
    keep = (bag_of >= 0) & (idx != padding_idx) if padding_idx >= 0 else bag_of >= 0
    m = torch.zeros((bags, idx.numel()), dtype=torch.int64)
    pos = torch.arange(idx.numel())[keep]
    m[bag_of[keep], pos] = 1
    return m


def _bag_of(idx: torch.Tensor, offs: torch.Tensor, include_last_offset: bool) -> torch.Tensor:
    """Bag index of each position: the last bag runs to the end of ``indices`` (torch's CPU
    kernel reads no end from the extra offset of ``include_last_offset``)."""
    starts = offs[:-1] if include_last_offset else offs
    return torch.searchsorted(starts, torch.arange(idx.numel()), right=True) - 1


def _slots(m: torch.Tensor) -> torch.Tensor:
    """``slots[b, l]``: the ``l``-th position of bag ``b`` (``-1`` past its end), bags padded
    to the longest (at least one slot)."""
    bags = m.shape[0]
    counts = m.sum(1)
    width = max(int(counts.max()) if bags else 0, 1)
    slots = torch.full((bags, width), -1, dtype=torch.int64)
    for b in range(bags):
        members = m[b].nonzero().flatten()
        slots[b, : members.numel()] = members
    return slots


def _bag_max(weight: Any, idx: torch.Tensor, m: torch.Tensor) -> tuple[MPCTensor, MPCTensor]:
    """``(max per bag, secret winning weight rows)`` (see the module docstring); the slots'
    one-hot is stashed on the returned indices."""
    party = find_party(weight)
    slots = _slots(m)
    valid = slots >= 0
    rows_idx = idx[slots.clamp(min=0)]
    rows = weight[rows_idx]  # (bags, width, D): share-wise gather at public indices
    padded = where_values(valid.unsqueeze(-1), rows, _PAD_VALUE)
    values, onehot = max_with_onehot(padded, 1, keepdim=False)
    nonempty = valid[:, :1].to(torch.int64)  # empty bags give 0, as torch
    values = wrap(values._share * nonempty, party)
    winners = wrap((onehot * rows_idx.unsqueeze(-1)).sum(1), party, dtype=torch.int64)
    winners.stash(_MAX_KEY, onehot)
    return values, winners


# public_fast off: forward and backward must agree on the saved offset2bag and bag sizes
# (ours exclude padding), so torch's own kernels never see them
@implements(
    aten._embedding_bag.default,
    aten._embedding_bag_forward_only.default,
    check=_check_bag,
    public_fast=False,
)
def embedding_bag(
    weight: Any,
    indices: Any,
    offsets: Any,
    scale_grad_by_freq: bool = False,
    mode: int = _SUM,
    sparse: bool = False,
    per_sample_weights: Any = None,
    include_last_offset: bool = False,
    padding_idx: int = -1,
) -> tuple[Any, Any, Any, Any]:
    """``(output, offset2bag, bag_size, max_indices)`` as torch (public except ``output`` and,
    for ``max``, ``max_indices``)."""
    party = find_party(weight, indices, offsets, per_sample_weights)
    idx = public_of(indices)
    offs = public_of(offsets)
    if idx is None or offs is None:
        raise unsupported("EmbeddingBag with encrypted indices or offsets", party)
    idx, offs = idx.long().reshape(-1), offs.long().reshape(-1)
    bags = offs.numel() - 1 if include_last_offset else offs.numel()
    bag_of = _bag_of(idx, offs, include_last_offset)
    m = _membership(idx, bag_of, bags, padding_idx)
    counts = m.sum(1)
    offset2bag = wrap_public(bag_of, party, torch.int64)
    bag_size = wrap_public(counts, party, torch.int64)
    if mode == _MAX:
        values, winners = _bag_max(weight, idx, m)
        return values, offset2bag, bag_size, winners
    rows = weight[idx]  # (n, D)
    if per_sample_weights is not None:
        rows = mul_values(rows, per_sample_weights.reshape(-1, 1), party)
    out = bilinear_values("matmul", m, rows, party)
    if mode == _MEAN:
        out = div_values(out, counts.clamp(min=1).unsqueeze(1), party)
    return out, offset2bag, bag_size, wrap_public(torch.zeros(bags, dtype=torch.int64), party)


def _bag_weight_grad(
    grad: Any,
    indices: Any,
    offset2bag: Any,
    maximum_indices: Any,
    num_weights: int,
    mode: int,
    per_sample_weights: Any,
    padding_idx: int,
) -> Any:
    party = find_party(grad, indices, maximum_indices, per_sample_weights)
    idx = public_of(indices)
    bag_of = public_of(offset2bag)
    if idx is None or bag_of is None:
        raise unsupported("EmbeddingBag backward with encrypted indices", party)
    idx, bag_of = idx.long().reshape(-1), bag_of.long().reshape(-1)
    bags = grad.shape[0]
    m = _membership(idx, bag_of, bags, padding_idx)
    scatter = torch.zeros((num_weights, idx.numel()), dtype=torch.int64)
    scatter[idx, torch.arange(idx.numel())] = 1  # S[w, i] = [idx[i] == w]
    if mode == _MAX:
        onehot = (
            maximum_indices.stashed(_MAX_KEY) if isinstance(maximum_indices, MPCTensor) else None
        )
        if onehot is None:
            raise unsupported(
                "EmbeddingBag(mode='max') backward without its forward's one-hot", party
            )
        flat_pos = _slots(m).reshape(-1)
        placed = mul_values(grad.unsqueeze(1), wrap(onehot, party, dtype=torch.int64), party)
        slot_to_w = torch.zeros((num_weights, flat_pos.numel()), dtype=torch.int64)
        ok = flat_pos >= 0
        slot_to_w[idx[flat_pos[ok]], torch.arange(flat_pos.numel())[ok]] = 1
        return bilinear_values("matmul", slot_to_w, placed.reshape(flat_pos.numel(), -1), party)
    g = grad
    if mode == _MEAN:
        g = div_values(g, m.sum(1).clamp(min=1).unsqueeze(1), party)
    if per_sample_weights is None:
        return bilinear_values("matmul", scatter @ m.t(), g, party)
    per_pos = bilinear_values("matmul", m.t(), g, party)  # (n, D)
    per_pos = mul_values(per_pos, per_sample_weights.reshape(-1, 1), party)
    return bilinear_values("matmul", scatter, per_pos, party)


def _check_bag_backward(grad: Any, indices: Any, *args: Any, **kwargs: Any) -> str | None:
    if public_of(indices) is None:
        return "EmbeddingBag with encrypted indices"
    return None


@implements(aten._embedding_bag_backward.default, check=_check_bag_backward, public_fast=False)
def embedding_bag_backward(
    grad: Any,
    indices: Any,
    offsets: Any,
    offset2bag: Any,
    bag_size: Any,
    maximum_indices: Any,
    num_weights: int,
    scale_grad_by_freq: bool,
    mode: int,
    sparse: bool,
    per_sample_weights: Any,
    padding_idx: int = -1,
) -> Any:
    """Weight gradient (dense; ``sparse=True`` and ``scale_grad_by_freq`` raise)."""
    if sparse or scale_grad_by_freq:
        raise unsupported(
            "EmbeddingBag(sparse=True or scale_grad_by_freq=True) backward", find_party(grad)
        )
    return _bag_weight_grad(
        grad,
        indices,
        offset2bag,
        maximum_indices,
        num_weights,
        mode,
        per_sample_weights,
        padding_idx,
    )


@implements(
    aten._embedding_bag_dense_backward.default, check=_check_bag_backward, public_fast=False
)
def embedding_bag_dense_backward(
    grad: Any,
    indices: Any,
    offset2bag: Any,
    bag_size: Any,
    maximum_indices: Any,
    num_weights: int,
    scale_grad_by_freq: bool,
    mode: int,
    per_sample_weights: Any,
    padding_idx: int = -1,
) -> Any:
    if scale_grad_by_freq:
        raise unsupported("EmbeddingBag(scale_grad_by_freq=True) backward", find_party(grad))
    return _bag_weight_grad(
        grad,
        indices,
        offset2bag,
        maximum_indices,
        num_weights,
        mode,
        per_sample_weights,
        padding_idx,
    )


def _check_psw_backward(grad: Any, weight: Any, indices: Any, *args: Any) -> str | None:
    return _check_bag_backward(grad, indices)


@implements(
    aten._embedding_bag_per_sample_weights_backward.default,
    check=_check_psw_backward,
    public_fast=False,
)
def embedding_bag_per_sample_weights_backward(
    grad: Any,
    weight: Any,
    indices: Any,
    offsets: Any,
    offset2bag: Any,
    mode: int,
    padding_idx: int = -1,
) -> Any:
    """``sum_d grad[bag(i), d] * weight[idx[i], d]`` per position (0 for padding)."""
    party = find_party(grad, weight, indices)
    idx = public_of(indices)
    bag_of = public_of(offset2bag)
    if idx is None or bag_of is None:
        raise unsupported("EmbeddingBag backward with encrypted indices", party)
    idx, bag_of = idx.long().reshape(-1), bag_of.long().reshape(-1)
    m = _membership(idx, bag_of, grad.shape[0], padding_idx)
    per_pos = bilinear_values("matmul", m.t(), grad, party)  # (n, D), 0 rows for padding
    return mul_values(per_pos, weight[idx], party).sum(-1)
