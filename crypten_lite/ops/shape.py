"""Layer L4: shape, view and indexing ops — data movement, applied to each party's share.

Moving, selecting, repeating or padding-with-zero the entries of a tensor commutes with the sum
of shares, so these ops run the same aten kernel on the int64 share (no messages). Views alias
the share buffer, so an in-place write through a view reaches the base tensor as in torch.
Indices must be public (plain tensors); a secret index needs comparisons (see ``embedding``).
Operands mixed into ``cat``/``stack``/``*_scatter`` may be public: party 0 holds their encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, share_wise, unsupported, wrap
from crypten_lite.ops._fixed import add_values, assign, div_values, frac_of, mul_values, ring_of
from crypten_lite.ops.reductions import ONEHOT_KEY, place_at_indices
from crypten_lite.runtime.encoding import encode
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []

# --------------------------------------------------------------------------- views

_VIEW_OPS = [
    aten.view.default,
    aten._unsafe_view.default,
    aten._reshape_alias.default,
    aten.t.default,
    aten.transpose.int,
    aten.permute.default,
    aten.expand.default,
    aten.squeeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.slice.Tensor,
    aten.select.int,
    aten.as_strided.default,
    aten.diagonal.default,
    aten.unfold.default,
    # Composite ops: torch decomposes them above the dispatch key, but op implementations that
    # call them on encrypted tensors meet them here.
    aten.reshape.default,
    aten.narrow.default,
    aten.flatten.using_ints,
    aten.unflatten.int,
    aten.movedim.int,
    aten.contiguous.default,
]


def _register_view(op: Any) -> None:
    def view_op(x: MPCTensor, *args: Any, **kwargs: Any) -> MPCTensor:
        return share_wise(op, x, *args, **kwargs)

    view_op.__name__ = f"view_{op.__name__.replace('.', '_')}"
    view_op.__doc__ = f"``{op}`` on the share; the result aliases the share buffer."
    implements(op)(view_op)


for _op in _VIEW_OPS:
    _register_view(_op)


@implements(aten.unsqueeze.default)
def unsqueeze(x: MPCTensor, dim: int) -> MPCTensor:
    """A view; secret argmax indices keep their one-hot (for ``scatter`` in max's backward)."""
    out = share_wise(aten.unsqueeze.default, x, dim)
    stashed = x.stashed(ONEHOT_KEY)
    if stashed is not None:
        out.stash(ONEHOT_KEY, stashed)
    return out


@implements(aten.expand_as.default)
def expand_as(x: MPCTensor, other: Any) -> MPCTensor:
    return share_wise(aten.expand.default, x, list(other.shape))


@implements(aten.view_as.default)
def view_as(x: MPCTensor, other: Any) -> MPCTensor:
    return share_wise(aten.view.default, x, list(other.shape))


@implements(aten.reshape_as.default)
def reshape_as(x: MPCTensor, other: Any) -> MPCTensor:
    return share_wise(aten.reshape.default, x, list(other.shape))


def _multi_view(op: Any, x: MPCTensor, *args: Any) -> list[MPCTensor]:
    shares = op(x._share, *args)
    public = x.public_value()
    publics = op(public, *args) if public is not None else [None] * len(shares)
    return [
        MPCTensor(s, x.party, dtype=x.dtype, alias=x._alias, public=p)
        for s, p in zip(shares, publics, strict=True)
    ]


@implements(aten.split.Tensor)
def split(x: MPCTensor, split_size: int, dim: int = 0) -> list[MPCTensor]:
    return _multi_view(aten.split.Tensor, x, split_size, dim)


@implements(aten.split_with_sizes.default)
def split_with_sizes(x: MPCTensor, split_sizes: Sequence[int], dim: int = 0) -> list[MPCTensor]:
    return _multi_view(aten.split_with_sizes.default, x, split_sizes, dim)


@implements(aten.unbind.int)
def unbind(x: MPCTensor, dim: int = 0) -> list[MPCTensor]:
    return _multi_view(aten.unbind.int, x, dim)


# --------------------------------------------------------------------------- copies of entries

_COPY_OPS = [
    aten.flip.default,
    aten.roll.default,
    aten.repeat.default,
    aten.tril.default,
    aten.triu.default,
    aten.select_backward.default,
    aten.slice_backward.default,
    aten.diagonal_backward.default,
    aten.unfold_backward.default,
    aten.diag_embed.default,
]


def _register_copy(op: Any) -> None:
    def copy_op(x: MPCTensor, *args: Any, **kwargs: Any) -> MPCTensor:
        kwargs.pop("dtype", None)
        return share_wise(op, x, *args, **kwargs)

    copy_op.__name__ = f"sharewise_{op.__name__.replace('.', '_')}"
    copy_op.__doc__ = f"``{op}`` on the share: linear with integer coefficients, so exact."
    implements(op)(copy_op)


for _op in _COPY_OPS:
    _register_copy(_op)


def _common_frac(xs: Sequence[Any], party: Party) -> tuple[int, torch.dtype]:
    fracs = [frac_of(x, party) for x in xs]
    frac = max(fracs)
    floating = any(
        (isinstance(x, torch.Tensor) and x.dtype.is_floating_point) or isinstance(x, float)
        for x in xs
    )
    dtype = torch.float32 if floating else torch.int64
    if dtype == torch.float32:
        frac = party.frac_bits
    return frac, dtype


@implements(aten.cat.default)
def cat(tensors: Sequence[Any], dim: int = 0) -> MPCTensor:
    """Concatenate secret and public tensors (public ones are encoded on party 0)."""
    party = find_party(tensors)
    frac, dtype = _common_frac(tensors, party)
    shares = [ring_of(t, party, frac) for t in tensors]
    return wrap(torch.cat(shares, dim), party, dtype=dtype)


@implements(aten.stack.default)
def stack(tensors: Sequence[Any], dim: int = 0) -> MPCTensor:
    party = find_party(tensors)
    frac, dtype = _common_frac(tensors, party)
    return wrap(torch.stack([ring_of(t, party, frac) for t in tensors], dim), party, dtype=dtype)


def _public_index(index: Any, party: Party, op: str) -> Any:
    if index is None:
        return None
    if isinstance(index, MPCTensor):
        value = index.public_value()
        if value is None:
            raise unsupported(
                f"{op} with a secret index is not supported (indices must be public; for a "
                "secret lookup multiply by an encrypted one-hot matrix)",
                party,
            )
        return value
    return index


def _secret_index(*args: Any, **kwargs: Any) -> str | None:
    """Validator: every index argument must be public."""
    leaves = [a for a in args[1:] if not isinstance(a, (list, tuple))]
    for a in args[1:]:
        if isinstance(a, (list, tuple)):
            leaves += list(a)
    for leaf in leaves:
        if isinstance(leaf, MPCTensor) and leaf.public_value() is None:
            return "a secret index (indices must be public; multiply by a one-hot instead)"
    return None


@implements(aten.index.Tensor, check=_secret_index)
def index(x: MPCTensor, indices: Sequence[Any]) -> MPCTensor:
    party = x.party
    idx = [_public_index(i, party, "indexing") for i in indices]
    return share_wise(aten.index.Tensor, x, idx)


@implements(aten.index_select.default, check=_secret_index)
def index_select(x: MPCTensor, dim: int, index: Any) -> MPCTensor:
    idx = _public_index(index, x.party, "index_select")
    return share_wise(aten.index_select.default, x, dim, idx)


@implements(aten.gather.default, check=_secret_index)
def gather(x: MPCTensor, dim: int, index: Any, *, sparse_grad: bool = False) -> MPCTensor:
    idx = _public_index(index, x.party, "gather")
    return share_wise(aten.gather.default, x, dim, idx)


def _two_operand(op: Any, base: Any, src: Any, *args: Any, **kwargs: Any) -> MPCTensor:
    """``op(base, src, ...)`` for ops linear in (base, src) jointly: scatters, index_put."""
    party = find_party(base, src)
    frac, dtype = _common_frac([base, src], party)
    out = op(ring_of(base, party, frac), ring_of(src, party, frac), *args, **kwargs)
    return wrap(out, party, dtype=dtype)


@implements(aten.slice_scatter.default)
def slice_scatter(base: Any, src: Any, *args: Any) -> MPCTensor:
    return _two_operand(aten.slice_scatter.default, base, src, *args)


@implements(aten.select_scatter.default)
def select_scatter(base: Any, src: Any, *args: Any) -> MPCTensor:
    return _two_operand(aten.select_scatter.default, base, src, *args)


@implements(aten.diagonal_scatter.default)
def diagonal_scatter(base: Any, src: Any, *args: Any) -> MPCTensor:
    return _two_operand(aten.diagonal_scatter.default, base, src, *args)


@implements(aten.scatter.src)
def scatter_src(base: Any, dim: int, index: Any, src: Any) -> MPCTensor:
    """Scatter at public indices (share-wise), or at secret argmax indices that carry their
    one-hot: ``base * (1 - one_hot) + one_hot * src`` (max/min's backward)."""
    party = find_party(base, src, index)
    stashed = index.stashed(ONEHOT_KEY) if isinstance(index, MPCTensor) else None
    if stashed is not None and stashed[0] == dim % index.dim() and index.shape[dim] == 1:
        hot = wrap(stashed[1], party, dtype=torch.int64)
        out = mul_values(hot, src, party)
        base_pub = public_of(base)
        if base_pub is None or bool((base_pub != 0).any()):
            out = add_values(add_values(base, mul_values(hot, base, party), party, -1), out, party)
        return out
    if isinstance(index, MPCTensor) and index.public_value() is None:
        return _scatter_secret(base, dim, index, src)
    idx = _public_index(index, party, "scatter")
    return _two_operand(lambda b, s: aten.scatter.src(b, dim, idx, s), base, src)


def _scatter_secret(base: Any, dim: int, index: MPCTensor, src: Any) -> MPCTensor:
    """``base.scatter(dim, index, src)`` at secret (distinct) indices, e.g. the backward of
    ``sort``/``topk``/``kthvalue``: ``src`` placed through the one-hot of the indices; a
    non-zero ``base`` is kept where no index points (one more one-hot placement of ones)."""
    party = index.party
    size = base.shape[dim % max(1, base.dim())]
    if isinstance(src, torch.Tensor) and src.shape != index.shape:
        src = src[tuple(slice(0, n) for n in index.shape)]
    placed = place_at_indices(src, index, dim, size)
    base_pub = public_of(base)
    if base_pub is not None and not bool((base_pub != 0).any()):
        return placed
    hit = place_at_indices(torch.ones(index.shape, dtype=torch.int64), index, dim, size)
    kept = add_values(base, mul_values(hit, base, party), party, -1)
    return add_values(kept, placed, party)


@implements(aten.scatter_add.default)
def scatter_add(base: Any, dim: int, index: Any, src: Any) -> MPCTensor:
    """Add ``src`` at public indices (share-wise), or at secret int64 indices (``cummax``'s
    backward) through their one-hot (:func:`~crypten_lite.ops.reductions.place_at_indices`)."""
    party = find_party(base, src)
    if isinstance(index, MPCTensor) and index.public_value() is None:
        size = base.shape[dim % max(1, base.dim())]
        return add_values(base, place_at_indices(src, index, dim, size), party)
    idx = _public_index(index, party, "scatter_add")
    return _two_operand(lambda b, s: aten.scatter_add.default(b, dim, idx, s), base, src)


@implements(aten.index_put.default)
def index_put(base: Any, indices: Sequence[Any], values: Any, accumulate: bool = False) -> Any:
    party = find_party(base, values)
    idx = [_public_index(i, party, "index_put") for i in indices]
    return _two_operand(lambda b, v: aten.index_put.default(b, idx, v, accumulate), base, values)


@implements(aten.index_put_.default, aten._index_put_impl_.default)
def index_put_(
    base: Any, indices: Sequence[Any], values: Any, accumulate: bool = False, unsafe: bool = False
) -> Any:
    return assign(base, index_put(base, indices, values, accumulate))


@implements(aten.index_add.default)
def index_add(base: Any, dim: int, index: Any, source: Any, *, alpha: Any = 1) -> MPCTensor:
    if alpha != 1:
        raise unsupported("index_add with alpha != 1", find_party(base, source))
    party = find_party(base, source)
    idx = _public_index(index, party, "index_add")
    return _two_operand(lambda b, s: aten.index_add.default(b, dim, idx, s), base, source)


@implements(aten.constant_pad_nd.default)
def constant_pad_nd(x: MPCTensor, pad: Sequence[int], value: Any = 0) -> MPCTensor:
    """Pad with a public constant: every share pads with 0, party 0 adds the encoded constant."""
    party = x.party
    # Encoded on every party, so an unrepresentable constant raises on all of them alike.
    encoded = int(encode(torch.tensor(float(value)), x.frac_bits))
    fill = encoded if party.rank == 0 else 0
    public = x.public_value()
    out_public = (
        torch.constant_pad_nd(public, list(pad), float(value)) if public is not None else None
    )
    return wrap(
        torch.constant_pad_nd(x._share, list(pad), fill), party, dtype=x.dtype, public=out_public
    )


@implements(aten.scatter.value, check=_secret_index)
def scatter_value(base: Any, dim: int, index: Any, value: Any) -> MPCTensor:
    """Scatter a public scalar at public indices: shares are overwritten by the scalar's
    encoding on party 0 and by 0 elsewhere (``scatter``'s backward zeroes the scattered
    positions with ``value = 0``)."""
    party = find_party(base, index)
    idx = _public_index(index, party, "scatter")
    fill = torch.as_tensor(public_of(value) if isinstance(value, torch.Tensor) else value)
    frac, dtype = _common_frac([base, fill], party)
    enc = int(encode(fill.to(torch.float64), frac)) if party.rank == 0 else 0
    share = ring_of(base, party, frac)
    return wrap(aten.scatter.value(share, dim, idx, enc), party, dtype=dtype)


def _fill_mask(shape: Sequence[int], dim: int, index: torch.Tensor) -> torch.Tensor:
    """Public bool mask of the positions ``index_fill(dim, index)`` writes."""
    d = dim % max(1, len(shape))
    mask = torch.zeros(list(shape), dtype=torch.bool)
    if not shape:
        return mask | bool(index.numel())
    return mask.index_fill(d, index.reshape(-1), True)


def _index_at(position: int) -> Any:
    """Validator: the argument at ``position`` (an index) must be public; others may be secret."""

    def check(*args: Any, **kwargs: Any) -> str | None:
        return _secret_index(None, args[position]) if len(args) > position else None

    return check


@implements(aten.index_fill.int_Scalar, aten.index_fill.int_Tensor, check=_index_at(2))
def index_fill(base: Any, dim: int, index: Any, value: Any) -> MPCTensor:
    """Fill the slices at public ``index`` with a scalar (public, or a 0-dim secret, as in
    ``trace``'s backward): a public mask selects share by share (local, exact)."""
    party = find_party(base, value)
    idx = _public_index(index, party, "index_fill")
    mask = _fill_mask(base.shape, dim, torch.as_tensor(idx))
    frac, dtype = _common_frac([base, value], party)
    fill = ring_of(value, party, frac).expand(mask.shape)
    return wrap(torch.where(mask, fill, ring_of(base, party, frac)), party, dtype=dtype)


@implements(aten.take.default, check=_secret_index)
def take(x: MPCTensor, index: Any) -> MPCTensor:
    """``x.reshape(-1)[index]`` at public indices (share-wise, no messages)."""
    idx = _public_index(index, x.party, "take")
    return share_wise(aten.take.default, x, idx)


@implements(aten.put.default, check=_index_at(1))
def put(base: Any, index: Any, source: Any, accumulate: bool = False) -> MPCTensor:
    """``take``'s inverse (and its backward): write or add ``source`` at public flat indices."""
    party = find_party(base, source)
    idx = _public_index(index, party, "put")
    return _two_operand(lambda b, s: aten.put.default(b, idx, s, accumulate), base, source)


@implements(aten.fill.Scalar)
def fill(x: MPCTensor, value: Any) -> MPCTensor:
    """A public tensor of ``x``'s shape filled with ``value`` (``fill_``'s functional form)."""
    party = x.party
    public = torch.full(tuple(x.shape), float(value)).to(x.dtype)
    share = ring_of(public, party, x.frac_bits)
    return wrap(share, party, dtype=x.dtype, public=public)


@implements(aten.copy.default)
def copy(x: Any, src: Any, non_blocking: bool = False) -> MPCTensor:
    """``copy_``'s functional form: ``src``'s values in ``x``'s shape and dtype (float results
    from int/bool sources are an exact shift; float into int needs a floor and is refused)."""
    party = find_party(x, src)
    dtype = x.dtype if isinstance(x, torch.Tensor) else torch.float32
    frac = party.frac_bits if dtype.is_floating_point else 0
    if frac_of(src, party) > frac:
        raise unsupported(f"copy of an encrypted float into a {dtype} tensor", party)
    share = ring_of(src, party, frac).expand(x.shape).clone()
    return wrap(share, party, dtype=torch.float32 if dtype.is_floating_point else dtype)


@implements(aten.masked_scatter.default, check=_index_at(1))
def masked_scatter(base: Any, mask: Any, source: Any) -> MPCTensor:
    """Write ``source``'s leading entries where the **public** ``mask`` is true (share-wise)."""
    party = find_party(base, source)
    m = _public_index(mask, party, "masked_scatter")
    return _two_operand(lambda b, s: aten.masked_scatter.default(b, m, s), base, source)


@implements(aten.masked_scatter_backward.default, check=_secret_index)
def masked_scatter_backward(grad: Any, mask: Any, sizes: Sequence[int]) -> MPCTensor:
    """The gradient of ``masked_scatter``'s source: ``grad`` at the public mask, in order."""
    party = find_party(grad, mask)
    m = _public_index(mask, party, "masked_scatter")
    return wrap(
        aten.masked_scatter_backward.default(ring_of(grad, party, party.frac_bits), m, sizes),
        party,
    )


# ---------------------------------------------------------------- reflection / replication pads
# Pure data movement with a public pattern: run the op on the (public) positions 0..n-1 of the
# input to learn which entry each output reads, then gather the shares. The backward adds each
# output gradient back to the entry it was read from (index_add at the same public positions).

_PADS = {
    aten.reflection_pad1d.default: aten.reflection_pad1d_backward.default,
    aten.reflection_pad2d.default: aten.reflection_pad2d_backward.default,
    aten.reflection_pad3d.default: aten.reflection_pad3d_backward.default,
    aten.replication_pad1d.default: aten.replication_pad1d_backward.default,
    aten.replication_pad2d.default: aten.replication_pad2d_backward.default,
    aten.replication_pad3d.default: aten.replication_pad3d_backward.default,
}


def _read_positions(op: Any, shape: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """For each output entry of ``op(input of shape, padding)``, the flat input entry it reads."""
    n = 1
    for s in shape:
        n *= int(s)
    positions = torch.arange(n, dtype=torch.float64).reshape(list(shape))
    read: torch.Tensor = op(positions, list(padding))
    return read.round().to(torch.int64)  # exact below 2**53


def _register_pad(op: Any, backward: Any) -> None:
    def pad(x: MPCTensor, padding: Sequence[int]) -> MPCTensor:
        read = _read_positions(op, x.shape, padding)
        out = x._share.reshape(-1)[read.reshape(-1)].reshape(read.shape)
        return wrap(out, x.party, dtype=x.dtype)

    def pad_backward(grad: Any, x: Any, padding: Sequence[int]) -> MPCTensor:
        party = find_party(grad, x)
        read = _read_positions(op, x.shape, padding)
        g = ring_of(grad, party, party.frac_bits).reshape(-1)
        share = torch.zeros(x.numel(), dtype=torch.int64).index_add(0, read.reshape(-1), g)
        share = share.reshape(x.shape)
        return wrap(share, party)

    pad.__name__ = op.__name__.replace(".", "_")
    pad.__doc__ = f"``{op}``: a public gather of the shares (no messages)."
    pad_backward.__name__ = backward.__name__.replace(".", "_")
    pad_backward.__doc__ = f"``{backward}``: a public index_add of the shares (no messages)."
    implements(op)(pad)
    implements(backward)(pad_backward)


for _pad, _pad_backward in _PADS.items():
    _register_pad(_pad, _pad_backward)


# --------------------------------------------------------------------------- im2col / col2im


def _im2col_read(shape: Sequence[int], *args: Any) -> torch.Tensor:
    """``im2col`` of the positions ``1..n`` of an image of ``shape`` (0 where it reads padding)."""
    n = 1
    for s in shape:
        n *= int(s)
    positions = torch.arange(1, n + 1, dtype=torch.float64).reshape(list(shape))
    read: torch.Tensor = aten.im2col.default(positions, *args)
    return read.round().to(torch.int64)


@implements(aten.im2col.default)
def im2col(x: MPCTensor, *args: Any) -> MPCTensor:
    """``F.unfold``: a public gather of the shares (padding reads a zero); no messages."""
    read = _im2col_read(x.shape, *args)
    padded = torch.cat([torch.zeros(1, dtype=torch.int64), x._share.reshape(-1)])
    return wrap(padded[read.reshape(-1)].reshape(read.shape), x.party, dtype=x.dtype)


@implements(aten.col2im.default)
def col2im(x: MPCTensor, output_size: Sequence[int], *args: Any) -> MPCTensor:
    """``F.fold``: overlapping columns summed into the image, a public index_add of the shares
    (exact, no messages); also ``im2col``'s backward."""
    lead = list(x.shape[:-2])
    channels = x.shape[-2]
    kernel = args[0]
    per = int(kernel[0]) * int(kernel[1])
    shape = [*lead, channels // per, *[int(s) for s in output_size]]
    read = _im2col_read(shape, *args)
    n = 1
    for s in shape:
        n *= s
    out = torch.zeros(n + 1, dtype=torch.int64).index_add(0, read.reshape(-1), x._share.reshape(-1))
    return wrap(out[1:].reshape(shape), x.party, dtype=x.dtype)


# --------------------------------------------------------------------------- scatter_reduce


def _reduce_check(base: Any, dim: int, index: Any, src: Any, reduce: str, **_: Any) -> str | None:
    if reduce not in ("sum", "mean"):
        return f"scatter_reduce with reduce={reduce!r} (supported: 'sum', 'mean')"
    return _secret_index(None, index)


@implements(aten.scatter_reduce.two, check=_reduce_check)
def scatter_reduce(
    base: Any, dim: int, index: Any, src: Any, reduce: str, *, include_self: bool = True
) -> MPCTensor:
    """``scatter_reduce`` with ``sum`` (share-wise, exact) or ``mean`` (a division by the
    public per-position count: one truncation) at public indices."""
    party = find_party(base, src)
    idx = _public_index(index, party, "scatter_reduce")
    frac, dtype = _common_frac([base, src], party)
    b, s = ring_of(base, party, frac), ring_of(src, party, frac)
    shape = list(base.shape)
    hit = torch.zeros(shape, dtype=torch.int64).scatter_add(dim, idx, torch.ones_like(idx))
    if not include_self:
        b = torch.where(hit > 0, torch.zeros((), dtype=torch.int64), b)
    total = wrap(b.scatter_add(dim, idx, s), party, dtype=dtype)
    if reduce == "sum":
        return total
    count = hit + (1 if include_self else 0)
    count = torch.where(count == 0, torch.ones((), dtype=torch.int64), count)
    return div_values(total, count, party)
