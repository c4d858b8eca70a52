"""Layer L3: the replicated family — 2-out-of-3 sharing for three parties, no dealer.

Representation. A value ``x`` is shared additively, ``x = x_0 + x_1 + x_2 (mod 2**64)``, and
party ``i`` holds its share ``x_i`` (the share every protocol of the library reads) and, when
known, the *companion* ``x_{i+1}`` (indices mod 3): party 0 holds ``(x_0, x_1)``, party 1
``(x_1, x_2)``, party 2 ``(x_2, x_0)``. Any two parties together hold all three shares; any one
party misses one, which is uniform to it. The companion is optional state kept by
:meth:`~crypten_lite.runtime.party.Party.companion` (keyed by the share tensor's identity and version,
so a share produced by an op that does not propagate it, or written in place since, has none);
a missing companion costs one round to fetch (:func:`with_companions`).

Protocols here: input sharing (:func:`share_input`), companion fetch (:func:`with_companions`),
products for every bilinear op (:func:`product`) and exact truncation without a dealer
(:func:`truncate`); opening with companions lives in :mod:`crypten_lite.protocols.opening`.

Security model: semi-honest, honest majority: at most one of the three parties is corrupted
(no two collude). Randomness comes from the pairwise AES-CTR streams agreed at set-up: ``G_ij``
is known to parties ``i`` and ``j`` only, and is uniform to the third.

References: Araki, Furukawa, Lindell, Nof and Ohara, "High-throughput semi-honest secure
three-party computation with an honest majority", CCS'16; Mohassel and Rindal, "ABY3: a mixed
protocol framework for machine learning", CCS'18.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.protocols.opening import open_among, pass_shares
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import BILINEAR_OPS, logical_rshift

__all__ = ["pair_form", "product", "reshare", "share_input", "truncate", "with_companions"]

Tensor = torch.Tensor
_SHIFT = 62  # truncation: z + 2**62 is in [0, 2**63) for |z| < 2**62 (as truncate_dealer)


def _next(party: Party) -> int:
    return (party.rank + 1) % 3


def _prev(party: Party) -> int:
    return (party.rank + 2) % 3


def _rotate(party: Party, values: Sequence[Tensor], tag: str) -> list[Tensor]:
    """Send ``values`` to the previous party; return what the next party sent (same shapes).

    After it, party ``i`` holds the values of party ``i + 1``: its companions.
    """
    flat = torch.cat([v.reshape(-1) for v in values]) if len(values) > 1 else values[0].reshape(-1)
    received = pass_shares({_prev(party): flat}, [_next(party)], party, tag=tag)[_next(party)]
    if received.dtype != torch.int64 or received.shape != flat.shape:
        raise ProtocolError(
            f"party {party.rank}: '{tag}' expected {flat.numel()} int64 shares from party "
            f"{_next(party)}, got {received.dtype} {tuple(received.shape)}"
        )
    out, offset = [], 0
    for v in values:
        out.append(received[offset : offset + v.numel()].view(v.shape))
        offset += v.numel()
    return out


def reshare(z: Tensor, party: Party, *, tag: str = "rep.reshare") -> Tensor:
    """Give an additive sharing ``[z]`` its companions; returns this party's (fresh) share.

    1. Each party adds a fresh pseudo-random zero sharing ``alpha`` (no messages):
       ``z'_i = z_i + alpha_i``.
    2. Party ``i`` sends ``z'_i`` to party ``i - 1``; it receives ``z'_{i+1}``, its companion.

    Cost: 1 round; each party sends one message of ``8 * numel`` bytes.
    Security: party ``i - 1`` receives ``z_i + alpha_i``; ``alpha_i`` involves the stream of
    parties ``i`` and ``i + 1``, unknown to ``i - 1``, so it is uniform and independent of
    everything party ``i - 1`` holds. Without step 1 it would leak: after a bridged op party 2's
    share is 0, so party 0 receiving ``x_1`` would know ``x = x_0 + x_1``.
    Reference: Araki et al., CCS'16, §2.2 (resharing).
    """
    fresh = z + party.przs(z.shape)
    (companion,) = _rotate(party, [fresh], tag)
    party.set_companion(fresh, companion)
    return fresh


def with_companions(
    shares: Sequence[Tensor], party: Party, *, tag: str = "rep.companion"
) -> list[tuple[Tensor, Tensor]]:
    """Each share with its companion: ``(x_i, x_{i+1})``; missing ones fetched in one round.

    The shares lacking a companion are re-shared together (:func:`reshare`'s steps, one message
    for all of them); their returned ``x_i`` is then the re-randomised share, which sums with
    the other parties' to the same value. A tensor listed twice is fetched once. Every party
    must call this with the same shares (their companions are present or absent alike: they
    are recorded by the same protocol steps on every party).

    Cost: 0 rounds if every companion is present, else 1 round and ``8 * numel`` bytes per
    party of the missing ones.
    Security: as :func:`reshare`.
    """
    result: dict[int, tuple[Tensor, Tensor]] = {}
    missing: list[Tensor] = []
    for s in shares:
        if id(s) in result or any(m is s for m in missing):
            continue
        companion = party.companion(s)
        if companion is None:
            missing.append(s)
        else:
            result[id(s)] = (s, companion)
    if missing:
        fresh = [s + party.przs(s.shape) for s in missing]
        companions = _rotate(party, fresh, tag)
        if len(fresh) > 1:
            # Own buffers, laid out like the fresh shares (as_strided moves need equal layouts).
            companions = [c.clone() for c in companions]
        for s, f, c in zip(missing, fresh, companions, strict=True):
            party.set_companion(f, c)
            result[id(s)] = (f, c)
    return [result[id(s)] for s in shares]


def pair_form(share: Tensor, party: Party) -> Tensor | None:
    """A 2-out-of-2 sharing of the value between parties 0 and 1, free when companions exist.

    For the non-linear bridge (parties 0 and 1 compute, party 2 deals): party 0 keeps ``x_0``,
    party 1 takes ``x_1 + x_2`` (``x_2`` is its companion), party 2 holds 0. ``None`` on every
    party when the companion is missing (the same protocol steps record it on every party), so
    the caller falls back to its one-message conversion.

    Cost: 0 rounds. Security: no message; afterwards party 0 still misses ``x_2`` and party 1
    ``x_0``, and party 2 (which knows ``x_2`` and ``x_0``) must not see the two parties'
    openings, as in the bridge, where it only deals.
    """
    companion = party.companion(share)
    if companion is None:
        return None
    if party.rank == 0:
        return share.clone()
    if party.rank == 1:
        return share + companion
    return torch.zeros_like(share)


def share_input(encoded: Tensor | None, src: int, shape: Sequence[int], party: Party) -> Tensor:
    """Replicated input sharing of party ``src``'s ring value ``x`` (shape known to all).

    With ``s = src`` and indices mod 3:

    1. Parties ``s`` and ``s + 2`` draw ``x_s`` from their common stream; parties ``s`` and
       ``s + 1`` draw ``x_{s+1}`` from theirs (no messages).
    2. Party ``s`` sends ``x_{s+2} = x - x_s - x_{s+1}`` to parties ``s + 1`` and ``s + 2``.
    3. Every party returns its share ``x_i`` with its companion ``x_{i+1}`` recorded.

    Cost: 1 round; party ``s`` sends ``8 * numel`` bytes to each of the two others.
    Security: party ``s + 1`` sees ``x_{s+1}`` and ``x_{s+2}``, and ``x_s`` comes from a stream
    it does not know, so ``x_{s+2}`` is uniform to it; symmetrically for party ``s + 2``.
    Reference: Mohassel and Rindal, ABY3, CCS'18, §2.2 (sharing with pseudo-random shares).
    """
    shape = tuple(shape)
    me = party.rank
    first, second = (src + 1) % 3, (src + 2) % 3
    tag = "share.replicated"
    if me == src:
        assert encoded is not None
        own = party.pair_prg(second).random_int64(shape)
        companion = party.pair_prg(first).random_int64(shape)
        last = encoded - own - companion
        pass_shares({first: last, second: last}, [], party, tag=tag)
    elif me == first:
        own = party.pair_prg(src).random_int64(shape)
        companion = pass_shares({}, [src], party, tag=tag)[src]
    else:
        companion = party.pair_prg(src).random_int64(shape)
        own = pass_shares({}, [src], party, tag=tag)[src]
    if own.shape != companion.shape:
        raise ProtocolError(
            f"party {me}: party {src} sent a share of shape {tuple(own.shape)}, expected {shape}"
        )
    party.set_companion(own, companion)
    return own


def product(
    op: str,
    x: Tensor,
    y: Tensor,
    party: Party,
    op_params: Mapping[str, Any] | None = None,
    *,
    tag: str | None = None,
    with_companion: bool = True,
) -> Tensor:
    """``[op(x, y)]`` for a bilinear op: local cross terms and one resharing round.

    1. Fetch the operands' missing companions (:func:`with_companions`; one round, skipped
       when both are present, as after input sharing or a product).
    2. Locally ``z_i = op(x_i, y_i + y_{i+1}) + op(x_{i+1}, y_i) + alpha_i`` with ``alpha`` a
       pseudo-random zero sharing. Summed over ``i`` the three cross terms cover every pair
       ``op(x_j, y_l)`` once (``l = j``, ``l = j + 1``, ``l = j - 1``), so ``sum z_i = op(x, y)``
       by bilinearity.
    3. With ``with_companion``: party ``i`` sends ``z_i`` to party ``i - 1`` (the resharing;
       :func:`reshare` without a second zero sharing: ``alpha`` of step 2 already masks it).
       Without it the result is additive only (for a caller that truncates next: the truncation
       opening replaces the resharing, and a later product fetches the companion if needed).

    Args:
        op: a name in :data:`crypten_lite.runtime.ring.BILINEAR_OPS` (shapes checked by the caller).
        x, y: this party's int64 shares; their companions are looked up.

    Returns:
        This party's share of ``op(x, y)`` (scale: the sum of the inputs'), its companion
        recorded when ``with_companion``.

    Cost: step 3: 1 round, one message of ``8 * numel(out)`` bytes per party (the resharing
    floor); plus step 1's round when a companion is missing. Compute: two bilinear evaluations
    per party.
    Security: semi-honest, one corruption. Party ``i - 1`` receives ``z_i``, masked by
    ``alpha_i``, which uses the stream of parties ``i`` and ``i + 1``: uniform to ``i - 1``.
    Reference: Araki et al., CCS'16, §2.2; Mohassel and Rindal, ABY3, CCS'18, §3 (matrix
    products at the cost of one output-sized resharing).
    """
    tag = tag or f"rep.{op}"
    (x0, x1), (y0, y1) = with_companions([x, y], party, tag=f"{tag}.companion")
    params = dict(op_params or {})
    if op == "mul":
        # Both terms have the broadcast shape of x and y, so the second accumulates in place.
        z = torch.mul(x0, y0 + y1)
        z.addcmul_(x1, y0)
    elif op == "matmul" and x0.dim() == 2 and y0.dim() == 2:
        z = torch.mm(x0, y0 + y1)
        z.addmm_(x1, y0)
    else:
        fn = BILINEAR_OPS[op]
        z = fn(x0, y0 + y1, **params)
        z += fn(x1, y0, **params)
    z += party.przs(z.shape)
    if with_companion:
        (companion,) = _rotate(party, [z], tag)
        party.set_companion(z, companion)
    return z


def _pair_draws(party: Party, shape: tuple[int, ...]) -> dict[str, Tensor]:
    """The truncation's stream draws, in the same order on both ends of each stream."""
    draws: dict[str, Tensor] = {}
    if party.rank in (0, 2):
        g02 = party.pair_prg(2 if party.rank == 0 else 0)
        draws["a0"] = g02.random_int64(shape)
        draws["m0"] = g02.random_int64(shape)
    if party.rank in (1, 2):
        g12 = party.pair_prg(2 if party.rank == 1 else 1)
        draws["a1"] = g12.random_int64(shape)
    return draws


def truncate(z: Tensor, party: Party, bits: int, *, tag: str = "rep.trunc") -> Tensor:
    """Exact truncation ``[floor(z / 2**k)]`` (or ``+ 1``) without a dealer: party 2 deals.

    Party 2 plays the dealer of :func:`~crypten_lite.protocols.truncation.truncate_dealer` for
    parties 0 and 1, from the streams it shares with them. ``G02`` and ``G12`` are those
    streams; ``a_2`` is party 2's private randomness; indices of shares are parties.

    1. Draws (no messages): parties 0 and 2 draw ``a_0, m_0`` from ``G02``; parties 1 and 2
       draw ``a_1`` from ``G12``; party 2 draws ``a_2`` privately. The mask is
       ``r = a_0 + a_1 + a_2``, uniform and known to party 2 only. Party 2 computes
       ``r_hi = r >> k`` (logical) and ``r_msb = msb(r)``, and ``m_1 = r_msb - m_0``: so
       ``m_0`` (party 0) and ``m_1`` (party 1) are a 2-out-of-2 sharing of ``r_msb``.
    2. One round, an opening to parties 0 and 1 only (``open_among``): party 0 sends
       ``u_0 = z_0 + 2**62 + a_0`` to party 1; party 1 sends ``u_1 = z_1 + a_1`` to party 0;
       party 2 sends ``u_2 = z_2 + a_2`` to both, and ``m_1`` to party 1 in the same message.
       Parties 0 and 1 learn ``c = u_0 + u_1 + u_2 = z + 2**62 + r``.
    3. As :func:`~crypten_lite.protocols.truncation.truncate_dealer` steps 3-4 (the wrap of
       ``z + 2**62 + r`` is ``(1 - msb(c)) * r_msb``; the borrow of the low bits is absorbed),
       ``floor(z / 2**k) + borrow = (c >> k) - 2**(62-k) - r_hi + W * r_msb`` with the public
       (to 0 and 1) ``W = 2**(64-k) * (1 - msb(c))``. Shares: party 0 returns
       ``(c >> k) - 2**(62-k) + W * m_0``, party 1 ``W * m_1``, party 2 ``-r_hi``; each adds a
       fresh zero sharing so no single output share is tied to the masks.

    Why the result is additive (no companion), unlike ABY3's truncation pair: exactness needs
    the wrap term ``W * r_msb``, whose coefficient ``W`` depends on ``c``; party 2 must not
    learn ``c`` (it knows ``r``, so ``c`` would reveal ``z``), so that term can only sit in
    shares of parties 0 and 1, while a companion of party 2 would have to contain it. The
    companion is fetched later, in one round, by the next product that needs it (a
    probabilistic ABY3 truncation could output replicated shares at once, but fails with
    probability about ``|z| / 2**63`` per element: see :mod:`crypten_lite.protocols.truncation`
    for why the library's default is exact).

    Error: ``floor(z / 2**k)`` or ``floor(z / 2**k) + 1``: below one unit in the last place,
    for every ``|z| < 2**62``, no failure probability (as ``truncate_dealer``).
    Cost: 1 round. Bytes per element: party 0 sends 8, party 1 sends 8, party 2 sends 24
    (``u_2`` to both, ``m_1`` to party 1). No dealer traffic.
    Security: semi-honest, one corruption; each single party's view is simulatable:
    party 0 receives ``u_1`` (masked by ``a_1`` from ``G12``, unknown to it) and ``u_2`` (masked
    by party 2's private ``a_2``): two independent uniform values, from which it computes ``c``;
    party 1 receives ``u_0`` (masked by ``a_0`` from ``G02``), ``u_2`` and ``m_1`` (masked by
    ``m_0`` from ``G02``): three independent uniform values; party 2 receives nothing. Party 0
    also holds ``m_0`` and party 1 ``m_1``, each uniform alone, so neither learns ``r_msb`` nor
    the wrap.
    Reference: the opening of ``z + r`` with a dealer pair ``(r, r >> k)`` follows Mohassel and
    Rindal, ABY3, CCS'18, §5.1.1 (truncation pair) with party 2 as the pair's dealer, and
    Catrina and Saxena, FC'10 (the shift into a positive range); the exact wrap correction is
    that of :func:`~crypten_lite.protocols.truncation.truncate_dealer`.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or not 0 <= bits <= _SHIFT:
        raise ValueError(
            f"party {party.rank}: truncation bits must be in [0, {_SHIFT}], got {bits}"
        )
    if bits == 0:
        return z.clone()
    shape = tuple(z.shape)
    k = bits
    draws = _pair_draws(party, shape)
    side: dict[int, Tensor] | None = None
    if party.rank == 0:
        masked = z + draws["a0"]
        masked += 1 << _SHIFT
    elif party.rank == 1:
        masked = z + draws["a1"]
    else:
        a2 = party.local_prg.random_int64(shape)
        r = draws["a0"] + draws["a1"]
        r += a2
        r_hi = logical_rshift(r, k)
        m1 = logical_rshift(r, 63)
        m1 -= draws["m0"]
        masked = z + a2
        side = {1: m1}
    opened, extras = open_among([masked], party, (0, 1), tag=tag, side=side)
    if party.rank == 2:
        out = r_hi.neg_()
    else:
        assert opened is not None
        c_pub = opened[0]
        # W = (1 - msb(c)) * 2**(64-k), computed as ((c >> 63) + 1) << (64-k).
        weight = c_pub >> 63
        weight += 1
        weight <<= 64 - k
        if party.rank == 0:
            out = weight.mul_(draws["m0"])
            out += logical_rshift(c_pub, k)
            out -= 1 << (_SHIFT - k)
        else:
            m1_recv = extras.get(2)
            if m1_recv is None or m1_recv.numel() != weight.numel():
                raise ProtocolError(
                    f"party {party.rank}: '{tag}' expected the truncation share m_1 from party 2"
                )
            out = weight.mul_(m1_recv.view(shape))
    out += party.przs(shape)
    return out
