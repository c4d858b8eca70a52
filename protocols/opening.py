"""Layer L3: the one door to disclosure — opening secret shares.

Every value that becomes public in crypten_lite passes through :func:`open_shares`; callers name
the result ``*_pub``. Grepping for ``open_shares`` is the leakage audit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.party import Party

__all__ = ["open_shares", "open_xor_shares"]


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
        if theirs.dtype != flat.dtype or theirs.shape != flat.shape:
            raise ProtocolError(
                f"party {party.rank}: '{tag}' expected {flat.dtype} shares of shape "
                f"{tuple(flat.shape)}, a peer sent {theirs.dtype} {tuple(theirs.shape)}"
            )
    # Received tensors own writable memory (wire.tensor_from_payload), so the sum accumulates
    # into the first of them; ``flat`` may still be in flight (zero-copy send) and stays as is.
    total = received[0]
    for theirs in [flat, *received[1:]]:
        if xor:
            total ^= theirs
        else:
            total += theirs
    return _unpack(total, shares)


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

    Cost: 1 round; each party sends ``8 * numel`` bytes to each of the ``N - 1`` others (to
    ``dst`` only when given).
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
