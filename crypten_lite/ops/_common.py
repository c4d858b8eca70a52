"""Layer L4: plumbing shared by the op families — finding the party, telling public from
secret, wrapping shares into results, data movement on shares, clear errors.

What operands *mean* in the ring (integer or real, which scale, how publics are encoded) is
decided in one place, :mod:`crypten_lite.ops._fixed`; nothing here encodes a value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from crypten_lite.errors import UnsupportedOperationError
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, _Alias, current_user_call

__all__ = [
    "find_party",
    "is_secret",
    "public_of",
    "share_wise",
    "unsupported",
    "wrap",
]

Number = int | float | bool


def find_party(*objs: Any) -> Party:
    """The party of the first encrypted tensor found in ``objs`` (nested lists included)."""
    for obj in objs:  # fast path: the leading leaves, before any container
        if isinstance(obj, MPCTensor):
            return obj.party
        if not (obj is None or isinstance(obj, (int, float, str, torch.Tensor))):
            break
    for leaf in tree_flatten(list(objs))[0]:
        if isinstance(leaf, MPCTensor):
            return leaf.party
    raise AssertionError("an op dispatched to MPCTensor has no MPCTensor argument")


def unsupported(what: str, party: Party | None = None) -> UnsupportedOperationError:
    """An :class:`UnsupportedOperationError` naming the party and the user call."""
    rank = f"party {party.rank}: " if party is not None else ""
    call = current_user_call()
    where = f" (called from {call})" if call else ""
    return UnsupportedOperationError(f"{rank}{what}{where}")


def public_of(x: Any) -> torch.Tensor | None:
    """The plaintext of a public operand, or ``None`` for a secret one.

    Plain tensors and numbers are public (every party holds the same value); an encrypted tensor
    is public only while it carries a valid public value.
    """
    if isinstance(x, MPCTensor):
        value = x.public_value()
        return None if value is None else value
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (bool, int, float)):
        return torch.tensor(x)
    return None


def is_secret(x: Any) -> bool:
    """Whether ``x`` is an encrypted tensor whose value is not public."""
    return isinstance(x, MPCTensor) and x.public_value() is None


def wrap(
    share: torch.Tensor,
    party: Party,
    *,
    dtype: torch.dtype = torch.float32,
    alias: _Alias | None = None,
    public: torch.Tensor | None = None,
) -> MPCTensor:
    """An :class:`MPCTensor` around a share computed by an op."""
    return MPCTensor(share, party, dtype=dtype, alias=alias, public=public)


def share_wise(func: Callable[..., Any], x: MPCTensor, *args: Any, **kwargs: Any) -> MPCTensor:
    """Apply a data-movement op (view, permute, index with public indices, ...) to the share.

    Such ops commute with the sum of shares, so applying them to every party's share applies
    them to the value; a public value moves the same way. When the result shares the input's
    buffer (a view), it keeps the input's alias identity, so in-place writes reach the base.
    """
    party = x.party
    out_share = func(x._share, *args, **kwargs)
    public = x.public_value()
    # as_strided reads the share's memory layout, which a public value need not share.
    strided = func in (torch.ops.aten.as_strided.default, torch.ops.aten._reshape_alias.default)
    out_public = func(public, *args, **kwargs) if public is not None and not strided else None
    same = out_share.untyped_storage().data_ptr() == x._share.untyped_storage().data_ptr()
    alias = x._alias if same else None
    if party.replicated:
        _move_companion(func, x._share, out_share, party, strided, *args, **kwargs)
    return MPCTensor(out_share, party, dtype=x.dtype, alias=alias, public=out_public)


def _move_companion(
    func: Callable[..., Any],
    share: torch.Tensor,
    out_share: torch.Tensor,
    party: Party,
    strided: bool,
    *args: Any,
    **kwargs: Any,
) -> None:
    """Replicated family: the companion of ``func(share)`` is ``func(companion)``.

    A data-movement op commutes with the sum of the three shares, so applying it to both
    shares a party holds applies it to the replicated sharing. ``as_strided`` reads memory
    layout, so it moves a companion only when both buffers have the same layout. Any doubt
    leaves the result without a companion: a later product fetches it (one round) instead of
    using a wrong one. The layouts of share and companion come from the same protocol steps on
    every party, so every party decides alike.
    """
    companion = party.companion(share)
    if companion is None:
        return
    if strided and (
        companion.stride() != share.stride()
        or companion.storage_offset() != share.storage_offset()
        or companion.untyped_storage().nbytes() != share.untyped_storage().nbytes()
    ):
        return
    try:
        moved = func(companion, *args, **kwargs)
    except RuntimeError:
        return
    if isinstance(moved, torch.Tensor) and moved.shape == out_share.shape:
        party.set_companion(out_share, moved)


def map_public(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """Replace every encrypted public tensor in ``tree`` by its plaintext."""

    def one(x: Any) -> Any:
        if isinstance(x, MPCTensor):
            value = x.public_value()
            assert value is not None
            return fn(value)
        return x

    return tree_map(one, tree)
