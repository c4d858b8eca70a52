"""Layer L3: turning a party's private value into shares, and shares back into values."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crypten_lite.encoding import decode, encode
from crypten_lite.errors import EncodingError
from crypten_lite.party import Party
from crypten_lite.protocols.opening import open_shares

__all__ = ["reveal", "share", "share_public"]


def share(
    value: torch.Tensor | None,
    src: int,
    party: Party,
    *,
    shape: Sequence[int] | None = None,
    frac_bits: int | None = None,
) -> torch.Tensor:
    """Secret-share party ``src``'s value ``x`` among all parties.

    1. If the other parties do not know the shape, ``src`` broadcasts it (one small round).
    2. Every party draws a pseudo-random zero sharing ``[z]`` (no messages).
    3. Party ``src`` returns ``encode(x) + z_src``; every other party returns ``z_i``.

    Args:
        value: the plaintext on party ``src`` (real numbers, encoded with ``frac_bits``; an int64
            tensor with ``frac_bits=0`` is taken as ring elements). Ignored on other parties.
        shape: the value's shape, if every party knows it (saves the broadcast).
        frac_bits: fixed-point precision; the session default when ``None``.

    Cost: 0 rounds with ``shape`` given, else 1 round of ``8 * (ndim + 1)`` bytes from ``src``.
    Security: the shares of parties other than ``src`` are independent of ``x``; any ``N - 1``
    parties together see ``encode(x) + z_src`` with ``z_src`` pseudo-random to them.
    """
    if not 0 <= src < party.world_size:
        raise ValueError(
            f"party {party.rank}: src {src} is not a party (world_size {party.world_size})"
        )
    f = party.frac_bits if frac_bits is None else frac_bits
    encoded: torch.Tensor | None = None
    if party.rank == src:
        try:
            if value is None:
                raise ValueError(
                    f"party {party.rank}: the source party of share() must pass a value"
                )
            encoded = encode(value, f)
            if shape is not None and tuple(shape) != tuple(encoded.shape):
                raise ValueError(
                    f"party {party.rank}: shape {tuple(shape)} given, but the value has shape "
                    f"{tuple(encoded.shape)}"
                )
        except (EncodingError, ValueError):
            if shape is None:
                # The others are waiting for the shape: tell them this input failed, so every
                # party raises instead of running on into a desynchronised protocol.
                party.comm.broadcast(torch.tensor([-1], dtype=torch.int64), src, "share.shape")
            raise
    if shape is None:
        dims = (
            torch.tensor([len(encoded.shape), *encoded.shape], dtype=torch.int64)
            if encoded is not None
            else None
        )
        announced = party.comm.broadcast(dims, src, "share.shape").tolist()
        if not announced or announced[0] < 0 or any(d < 0 for d in announced[1:]):
            raise EncodingError(
                f"party {party.rank}: party {src} could not encode its input to share() "
                "(its own error says why)"
            )
        shape = tuple(announced[1:])
    zero = party.przs(tuple(shape))
    return zero + encoded if encoded is not None else zero


def share_public(value: torch.Tensor, party: Party) -> torch.Tensor:
    """Shares of a public ring value every party knows: party 0 holds it, the others hold 0."""
    return value.clone() if party.rank == 0 else torch.zeros_like(value)


def reveal(
    share_: torch.Tensor,
    party: Party,
    *,
    dst: int | None = None,
    frac_bits: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """Open a fixed-point sharing and decode it (to ``dst`` only, when given).

    Cost: 1 round, ``8 * numel`` bytes to each peer (to ``dst`` only when given).
    """
    opened = open_shares([share_], party, dst=dst, tag="reveal")
    if opened is None:
        return None
    f = party.frac_bits if frac_bits is None else frac_bits
    value_pub = opened[0]
    return decode(value_pub, f, dtype)
