"""Layer L3: the one door to disclosure — opening secret shares.

Every value that becomes public in crypten_lite passes through :func:`open_shares`; callers name
the result ``*_pub``. Grepping for ``open_shares`` is the leakage audit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.party import Party

__all__ = ["open_among", "open_shares", "open_xor_shares", "pass_shares"]


def _pack(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(shares) == 1:
        return shares[0].reshape(-1)
    return torch.cat([s.reshape(-1) for s in shares])


def _unpack(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for s in like:
        n = math.prod(s.shape)
        out.append(flat[offset : offset + n].reshape(s.shape))
        offset += n
    return out


def _check(party: Party, shares: Sequence[torch.Tensor], dst: int | None) -> None:
    if dst is not None and not 0 <= dst < party.world_size:
        raise ValueError(
            f"party {party.rank}: dst {dst} is not a party (world_size {party.world_size})"
        )
    for s in shares:
        if s.dtype != torch.int64:
            raise TypeError(f"party {party.rank}: shares are int64 ring tensors, got {s.dtype}")


def _open(
    shares: Sequence[torch.Tensor], party: Party, dst: int | None, tag: str, xor: bool
) -> list[torch.Tensor] | None:
    _check(party, shares, dst)
    if not shares:
        return []
    if not xor and party.replicated:
        companions = [party.companion(s) for s in shares]
        if all(c is not None for c in companions):
            return _open_replicated(shares, companions, party, dst, tag)  # type: ignore[arg-type]
    flat = _pack(shares)
    comm = party.comm
    if dst is None:
        received = list(comm.exchange(flat, tag).values())
    else:
        gathered = comm.gather(flat, dst, tag)
        if gathered is None:
            return None
        received = [t for r, t in enumerate(gathered) if r != party.rank]
    if not received:
        return _unpack(flat.clone(), shares)
    for theirs in received:
        _check_received(party, tag, flat, theirs)
    # Received tensors own writable memory (wire.tensor_from_payload), so the sum accumulates
    # into the first of them; ``flat`` may still be in flight (zero-copy send) and stays as is.
    total = received[0]
    for theirs in [flat, *received[1:]]:
        if xor:
            total ^= theirs
        else:
            total += theirs
    return _unpack(total, shares)


def _check_received(party: Party, tag: str, flat: torch.Tensor, theirs: torch.Tensor) -> None:
    if theirs.dtype != flat.dtype or theirs.shape != flat.shape:
        raise ProtocolError(
            f"party {party.rank}: '{tag}' expected {flat.dtype} shares of shape "
            f"{tuple(flat.shape)}, a peer sent {theirs.dtype} {tuple(theirs.shape)}"
        )


def _open_replicated(
    shares: Sequence[torch.Tensor],
    companions: Sequence[torch.Tensor],
    party: Party,
    dst: int | None,
    tag: str,
) -> list[torch.Tensor] | None:
    """Open replicated sharings: party ``i`` holds ``x_i`` and ``x_{i+1}``, lacks only ``x_{i+2}``.

    To all: party ``j`` sends its ``x_j`` to party ``j + 1`` (the one party lacking it), one
    message each. To ``dst``: party ``dst + 2`` sends ``x_{dst+2}`` to ``dst``; party
    ``dst + 1`` sends nothing.
    """
    n = party.world_size
    me = party.rank
    flat = _pack(shares)
    if dst is None:
        received = party.comm.route({(me + 1) % n: flat}, [(me - 1) % n], tag)
    elif me == dst:
        received = party.comm.route({}, [(me + 2) % n], tag)
    elif me == (dst + 2) % n:
        party.comm.route({dst: flat}, [], tag)
        return None
    else:
        return None
    (missing,) = received.values()
    _check_received(party, tag, flat, missing)
    missing += flat
    missing += _pack(companions)
    return _unpack(missing, shares)


def pass_shares(
    sends: Mapping[int, torch.Tensor], recv_from: Sequence[int], party: Party, *, tag: str
) -> dict[int, torch.Tensor]:
    """Hand shares to other parties without opening anything (the replicated family's moves).

    One round: ``sends[peer]`` goes to each peer, then one tensor arrives from each of
    ``recv_from``. It lives here, next to the openings, so that every share that leaves a
    party is audited in this module. Callers guarantee that what they send reveals nothing:
    a share re-randomised with a fresh zero sharing the receiver cannot predict
    (:func:`crypten_lite.protocols.replicated.reshare`), or a share the receiver is meant to
    hold in a sharing where it still misses another (input sharing).

    Cost: 1 round; the bytes of ``sends``.
    """
    for tensor in sends.values():
        if tensor.dtype != torch.int64:
            raise TypeError(
                f"party {party.rank}: shares are int64 ring tensors, got {tensor.dtype}"
            )
    received = party.comm.route(sends, recv_from, tag)
    for peer, tensor in received.items():
        if tensor.dtype != torch.int64:
            raise ProtocolError(
                f"party {party.rank}: '{tag}' expected int64 shares, party {peer} sent {tensor.dtype}"
            )
    return received


def open_among(
    shares: Sequence[torch.Tensor],
    party: Party,
    members: Sequence[int],
    *,
    tag: str,
    side: dict[int, torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor] | None, dict[int, torch.Tensor]]:
    """Open arithmetic sharings to the parties in ``members`` only (the others learn nothing).

    1. Each party sends its shares, concatenated, to every member other than itself;
       ``side[m]`` (dealer material for member ``m``, any shape) travels in the same message.
    2. Each member adds the shares it holds and received.

    Returns:
        (the opened values on a member, else ``None``; ``sender -> side tensor`` received,
        flattened, from each sender that appended one).

    Cost: 1 round; each party sends ``8 * numel`` bytes (plus its side tensors) to each
    member other than itself.
    Security: reveals the opened values to the members, by design; callers open masked
    values only (see :func:`crypten_lite.protocols.replicated.truncate`).
    """
    _check(party, shares, None)
    me = party.rank
    flat = _pack(shares)
    side = side or {}
    sends = {}
    for m in members:
        if m == me:
            continue
        extra = side.get(m)
        sends[m] = flat if extra is None else torch.cat([flat, extra.reshape(-1)])
    senders = [r for r in range(party.world_size) if r != me] if me in members else []
    received = party.comm.route(sends, senders, tag)
    if me not in members:
        return None, {}
    total = flat.clone()
    extras: dict[int, torch.Tensor] = {}
    n = flat.numel()
    for sender, theirs in received.items():
        if theirs.dtype != flat.dtype or theirs.dim() != 1 or theirs.numel() < n:
            raise ProtocolError(
                f"party {me}: '{tag}' expected int64 shares of {n} elements, party {sender} "
                f"sent {theirs.dtype} {tuple(theirs.shape)}"
            )
        total += theirs[:n]
        if theirs.numel() > n:
            extras[sender] = theirs[n:]
    return _unpack(total, shares), extras


def open_shares(
    shares: Sequence[torch.Tensor], party: Party, *, dst: int | None = None, tag: str = "open"
) -> list[torch.Tensor] | None:
    """Open arithmetic sharings: every party learns ``x = sum_i [x]_i mod 2**64``.

    Several tensors are opened together in one message per peer (one round).

    1. Each party sends its shares of all tensors, concatenated, to every other party (or only
       to ``dst``).
    2. Each receiver adds the shares it holds and received.

    Args:
        shares: this party's int64 shares, any shapes.
        dst: open to this party only; the others return ``None``.

    Under the replicated family, when every share has its companion (party ``i`` holds
    ``x_i`` and ``x_{i+1}``), each party lacks one share only: party ``j`` sends ``x_j`` to
    party ``j + 1`` alone (to ``dst``: only party ``dst + 2`` sends, one message).

    Cost: 1 round; each party sends ``8 * numel`` bytes to each of the ``N - 1`` others (to
    ``dst`` only when given); replicated with companions: ``8 * numel`` bytes per party in
    all (one message in all to ``dst``).
    Security: reveals the opened values, by design; callers must only open masked values or
    outputs meant to be public.
    """
    return _open(shares, party, dst, tag, xor=False)


def open_xor_shares(
    shares: Sequence[torch.Tensor], party: Party, *, dst: int | None = None, tag: str = "open.xor"
) -> list[torch.Tensor] | None:
    """Open XOR (binary) sharings of int64 words: ``x = XOR_i <x>_i``.

    Cost and security as :func:`open_shares`.
    """
    return _open(shares, party, dst, tag, xor=True)
