"""Layer L3: resharing a 3-party additive sharing onto parties 0 and 1 (the helper-dealer view).

Under the replicated family, ops that are not local run between parties 0 and 1 with party 2 as
their dealer (:mod:`crypten_lite.runtime.helper`, :mod:`crypten_lite.bridge`). Their inputs are
3-out-of-3 additive sharings ``x = x_0 + x_1 + x_2``; :func:`reshare_to_pair` moves party 2's
share onto party 1 under a mask only parties 0 and 2 know.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crypten_lite.runtime.party import Party
from crypten_lite.runtime.prg import PRG

__all__ = ["reshare_to_pair"]

_TAG = "bridge.reshare"


def reshare_to_pair(
    shares: Sequence[torch.Tensor],
    party: Party,
    mask_prg: PRG | None,
    *,
    companion: Sequence[torch.Tensor | None] | None = None,
    xor: bool = False,
) -> list[torch.Tensor]:
    """Turn 3-party additive sharings ``[x]`` into 2-party sharings on parties 0 and 1.

    With ``xor=True`` the sharings are XOR sharings of words (``x = x_0 ^ x_1 ^ x_2``) and every
    ``+``/``-`` below is ``^``.

    1. Party 2 draws ``r`` from the AES-CTR stream it shares with party 0 (``mask_prg``) and
       sends ``m = x_2 + r`` to party 1 (every tensor of the batch in one message).
    2. Party 0 draws the same ``r`` and returns ``x_0 - r``.
    3. Party 1 returns ``x_1 + m``; party 2 returns zeros.
    Then ``(x_0 - r) + (x_1 + x_2 + r) = x`` and party 2's share is 0. Where party 1 already
    holds ``x_2`` (the replicated companion, ``companion[k]`` on party 1, ``None`` elsewhere
    and on the other parties), that tensor needs no message: party 1 adds it and parties 0 and
    2 draw no mask for it. Every party must pass the same pattern of ``None``s.

    Cost: one message from party 2 to party 1, ``8 * numel`` bytes (the tensors without a
    companion); one round for parties 1 and 2 only; none when the batch is empty.

    Security: semi-honest, honest majority. Party 1 sees ``x_2 + r`` with ``r`` uniform and
    unknown to it (the stream of parties 0 and 2, keyed by their X25519 secret). Parties 0 and 2
    receive nothing. The result is a fresh 2-party sharing whose shares are uniform to each of
    parties 0 and 1 alone.

    Reference: the standard additive resharing; cf. Araki et al., "High-Throughput
    Semi-Honest Secure Three-Party Computation with an Honest Majority", CCS 2016 (re-sharing
    with correlated randomness from pairwise keys).
    """
    if not shares:
        return []
    has = list(companion) if companion is not None else [None] * len(shares)
    sent = [k for k, c in enumerate(has) if c is None]
    out = [s for s in shares]

    def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a ^ b if xor else a + b

    def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a ^ b if xor else a - b

    if party.rank == 1:
        for k, c in enumerate(has):
            if c is not None:
                out[k] = add(shares[k], c)
    if not sent:
        return [torch.zeros_like(s) for s in out] if party.rank == 2 else out
    sizes = [shares[k].numel() for k in sent]
    total = sum(sizes)
    if party.rank in (0, 2):
        if mask_prg is None:
            raise ValueError(f"party {party.rank}: the resharing needs the mask stream 0-2")
        mask = mask_prg.random_int64((total,))
    if party.rank == 2:
        flat = add(torch.cat([shares[k].reshape(-1) for k in sent]), mask)
        party.comm.send(1, flat, _TAG)
        return [torch.zeros_like(s) for s in shares]
    if party.rank == 0:
        for k, piece in zip(sent, _pieces(mask, sizes), strict=True):
            out[k] = sub(shares[k], piece.reshape(shares[k].shape))
        return out
    received = party.comm.recv(2, _TAG)
    if received.numel() != total:
        raise ValueError(f"party 1: resharing got {received.numel()} elements, expected {total}")
    for k, piece in zip(sent, _pieces(received, sizes), strict=True):
        out[k] = add(out[k], piece.reshape(shares[k].shape))
    return out


def _pieces(flat: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    out, offset = [], 0
    for n in sizes:
        out.append(flat[offset : offset + n])
        offset += n
    return out
