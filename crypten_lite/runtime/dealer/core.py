"""Layer L2: the kind table, request layouts, and the draws and corrections of every item.

Draw order is part of the protocol: for each item, party ``i`` draws its free components in
order, then (``i > 0``) its derived components in order (:func:`party_draw`). Small items (up to
4096 elements in all) are drawn with one keystream call and split into views; the bytes are the
same. The dealer replays every party's draws, reconstructs the free values, derives the rest and
computes party 0's derived shares, the corrections (:func:`dealer_corrections`).

The trusted first party uses the other order (``draw_derived=False``, ``others_derived=False``):
every party draws its free components only, parties ``1..N-1`` hold zero derived shares, and
party 0's derived shares are the derived values (no replay of derived draws, no subtraction).
The dealer process (:func:`dealer_corrections`, the wire format) always uses the first one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.dealer.arith_kinds import ARITH_KINDS
from crypten_lite.runtime.dealer.bit_kinds import BIT_KINDS
from crypten_lite.runtime.dealer.request import (
    ARITH,
    BIT,
    DealerRequest,
    DealerStore,
    Layout,
    Shape,
    _Kind,
)
from crypten_lite.runtime.prg import PRG
from crypten_lite.runtime.ring import freeze_params

__all__ = ["dealer_corrections", "party_draw"]

_MAX_REQUEST_ELEMENTS = 1 << 31
_MERGED_DRAW_ELEMENTS = 4096

# Every request kind: see arith_kinds.py and bit_kinds.py for what each one deals.
_KINDS: dict[str, _Kind] = {**ARITH_KINDS, **BIT_KINDS}


_LAYOUTS: dict[tuple[str, tuple[tuple[str, Any], ...]], Layout] = {}
_MAX_CACHED_LAYOUTS = 4096


def _layout(request: DealerRequest) -> Layout:
    """The (free, derived) component shapes and sharings of a request, validated.

    Cached per (kind, params): shape inference for convolutions costs about a millisecond.
    """
    layout = request.__dict__.get("_layout")
    if layout is not None:
        return layout  # type: ignore[no-any-return]
    try:
        key = (request.kind, freeze_params(request.params))
        layout = _LAYOUTS.get(key)
    except (TypeError, AttributeError):
        raise ProtocolError(f"invalid dealer request {str(request.to_json())[:80]}") from None
    if layout is not None:
        object.__setattr__(request, "_layout", layout)
        return layout
    kind = _KINDS.get(request.kind)
    if kind is None:
        raise ProtocolError(f"unknown dealer request kind {request.kind!r}")
    try:
        free, derived = kind.layout(request.params)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad op name or shapes from a peer
        raise ProtocolError(f"invalid dealer request {request.to_json()}: {exc}") from None
    total = sum(math.prod(s) for s, _ in free + derived)
    if total > _MAX_REQUEST_ELEMENTS:
        raise ProtocolError(f"dealer request of {total} elements is too large")
    if len(_LAYOUTS) >= _MAX_CACHED_LAYOUTS:
        _LAYOUTS.clear()
    layout = _LAYOUTS[key] = (tuple(free), tuple(derived))
    object.__setattr__(request, "_layout", layout)
    return layout


def _draw(prg: PRG, shape: Shape, sharing: str) -> torch.Tensor:
    return prg.random_bits(shape) if sharing == BIT else prg.random_int64(shape)


def _combine_(total: torch.Tensor, part: torch.Tensor, sharing: str) -> None:
    if sharing == ARITH:
        total += part
    else:
        total ^= part


def party_draw(
    prg: PRG, request: DealerRequest, rank: int, *, draw_derived: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The shares party ``rank`` draws itself: all free ones, and the derived ones if rank > 0
    and ``draw_derived`` (the trusted first party draws free components only, on every rank,
    and returns no derived shares here)."""
    free, derived = _layout(request)
    comps = free if rank == 0 or not draw_derived else (*free, *derived)
    sizes = [math.prod(s) for s, _ in comps]
    total = sum(sizes)
    if total > _MERGED_DRAW_ELEMENTS or len(comps) < 2:
        shares = [_draw(prg, s, k) for s, k in comps]
    else:
        # Small items: one keystream call for all components (the same bytes, in the same
        # order), split into views. Large items get a tensor each, so that a kept component
        # does not keep the others' memory alive.
        flat = prg.random_int64((total,))
        shares, offset = [], 0
        for (shape, kind), n in zip(comps, sizes, strict=True):
            part = flat[offset : offset + n].view(shape)
            if kind == BIT:
                part &= 1
            shares.append(part)
            offset += n
    return shares[: len(free)], shares[len(free) :]


def dealer_corrections(
    prgs: Sequence[PRG], request: DealerRequest, store: DealerStore | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Replay every party's draws and compute party 0's derived shares.

    Args:
        prgs: the dealer's stream with each party, indexed by rank.
        store: the dealer's state (fixed masks); needed by the ``fixed_*`` kinds.

    Returns:
        (party 0's free shares, party 0's derived shares = the corrections).
    """
    party0_free, _ = party_draw(prgs[0], request, 0)
    return party0_free, _corrections(prgs, request, party0_free, store)


def _corrections(
    prgs: Sequence[PRG],
    request: DealerRequest,
    party0_free: Sequence[torch.Tensor],
    store: DealerStore | None,
    *,
    others_derived: bool = True,
) -> list[torch.Tensor]:
    """Party 0's derived shares, given its free shares (read, not modified) and the other
    parties' streams (drawn here).

    With ``others_derived=False`` (the trusted first party) parties ``1..N-1`` draw no derived
    shares (theirs are zeros), so only their free draws are replayed and party 0's derived
    shares are the derived values themselves.
    """
    free, derived = _layout(request)
    totals: list[torch.Tensor] | None = None
    others: list[torch.Tensor] | None = None
    # Parties 1..N-1 first: their drawn tensors are fresh, so the sums accumulate in place into
    # them (party 0's own draws are returned, so they are added last, without a copy).
    for rank in range(1, len(prgs)):
        shares, rest = party_draw(prgs[rank], request, rank, draw_derived=others_derived)
        if totals is None:
            totals, others = shares, rest
            continue
        for t, s, (_, k) in zip(totals, shares, free, strict=True):
            _combine_(t, s, k)
        if others_derived:
            for o, s, (_, k) in zip(others or [], rest, derived, strict=True):
                _combine_(o, s, k)
    if totals is None:
        totals = [t.clone() for t in party0_free]
    else:
        for t, s, (_, k) in zip(totals, party0_free, free, strict=True):
            _combine_(t, s, k)
    values = _KINDS[request.kind].derive(
        request.params, totals, store if store is not None else DealerStore()
    )
    if others_derived and others is not None:
        for v, o, (_, k) in zip(values, others, derived, strict=True):
            if k == ARITH:
                v -= o
            else:
                v ^= o
    return values
