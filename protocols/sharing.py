"""Layer L3: turning a party's private value into shares, and shares back into values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.errors import EncodingError
from crypten_lite.protocols import replicated
from crypten_lite.protocols.opening import open_shares
from crypten_lite.runtime.comm import FAILURE_NOTICE
from crypten_lite.runtime.encoding import decode, encode
from crypten_lite.runtime.party import Party

__all__ = ["abort_share", "reveal", "share", "share_public"]


def share(
    value: Any,
    src: int,
    party: Party,
    *,
    shape: Sequence[int] | None = None,
    frac_bits: int | None = None,
) -> torch.Tensor:
    """Secret-share party ``src``'s value ``x`` among all parties.

    1. Party ``src`` checks and encodes its input; if that fails, it tells the others (step 2's
       message, or a ``share.failed`` notice) before raising, so no party runs on alone.
    2. If the other parties do not know the shape, ``src`` broadcasts it (one small round).
    3. Every party draws a pseudo-random zero sharing ``[z]`` (no messages).
    4. Party ``src`` returns ``encode(x) + z_src``; every other party returns ``z_i``.

    Args:
        value: the plaintext on party ``src``: a tensor or anything ``torch.as_tensor`` takes
            (real numbers, encoded with ``frac_bits``; an int64 tensor with ``frac_bits=0`` is
            taken as ring elements). Ignored on other parties.
        shape: the value's shape, if every party knows it (saves the broadcast).
        frac_bits: fixed-point precision; the session default when ``None``.

    Raises:
        EncodingError: on ``src``, the value cannot be encoded; on the others, when the shape
            is broadcast, ``src``'s input failed (any error on ``src``: ``None``, a ragged list,
            a tensor of the wrong shape, NaN). With ``shape`` given there is no message to
            carry the failure in step 1: ``src`` raises alone, and the notice it leaves makes
            every other party's next receive from ``src`` fail with a ``ProtocolError`` naming
            ``share.failed`` instead of waiting for the timeout.

    Under the replicated family, step 3-4 are
    :func:`crypten_lite.protocols.replicated.share_input`: every party also gets its companion
    share, for one more round in which ``src`` sends ``8 * numel`` bytes to each other party.

    Cost: 0 rounds with ``shape`` given, else 1 round of ``8 * (ndim + 1)`` bytes from ``src``.
    Security: the shares of parties other than ``src`` are independent of ``x``; any ``N - 1``
    parties together see ``encode(x) + z_src`` with ``z_src`` pseudo-random to them. A failure
    notice reveals only that ``src``'s input was invalid.
    """
    if not 0 <= src < party.world_size:
        raise ValueError(
            f"party {party.rank}: src {src} is not a party (world_size {party.world_size})"
        )
    f = party.frac_bits if frac_bits is None else frac_bits
    encoded: torch.Tensor | None = None
    if party.rank == src:
        try:
            encoded = _encode_input(value, f, party, shape)
        except Exception:
            abort_share(src, party, shape_known=shape is not None)
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
                "(an invalid or unencodable value; its own error says why)"
            )
        shape = tuple(announced[1:])
    if party.replicated:
        return replicated.share_input(encoded, src, shape, party)
    zero = party.przs(tuple(shape))
    return zero + encoded if encoded is not None else zero


def _encode_input(
    value: Any, frac_bits: int, party: Party, shape: Sequence[int] | None
) -> torch.Tensor:
    """Party ``src``'s checks of its input to :func:`share`, then its encoding."""
    if value is None:
        raise ValueError(f"party {party.rank}: the source party of share() must pass a value")
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            raise TypeError(
                f"party {party.rank}: share() takes a plaintext, got a {type(value).__name__} "
                "(an encrypted tensor is already shared)"
            )
        value = value.detach()
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(
            f"party {party.rank}: share() input of type {type(value).__name__} is not a tensor "
            f"of numbers ({exc})"
        ) from None
    try:
        encoded = encode(tensor, frac_bits)
    except EncodingError as exc:
        raise EncodingError(f"party {party.rank}: {exc}") from None
    if shape is not None and tuple(shape) != tuple(encoded.shape):
        raise ValueError(
            f"party {party.rank}: shape {tuple(shape)} given, but the value has shape "
            f"{tuple(encoded.shape)}"
        )
    return encoded


def abort_share(src: int, party: Party, *, shape_known: bool) -> None:
    """Party ``src``'s input to a sharing failed: tell every other party, then the caller raises.

    When the others wait for the shape (``share.shape``), the announced shape ``[-1]`` makes
    them raise at once. When they know the shape, they wait for nothing, so ``src`` leaves a
    ``share.failed`` notice instead: their next receive from ``src`` meets it and raises
    :class:`~crypten_lite.errors.PartyFailedError`, rather than waiting for the timeout.

    Cost: 1 round, 8 bytes to each peer.
    """
    failed = torch.tensor([-1], dtype=torch.int64)
    if not shape_known:
        party.comm.broadcast(failed, src, "share.shape")
        return
    for peer in range(party.world_size):
        if peer != party.rank:
            party.comm.send(peer, failed, FAILURE_NOTICE)


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
