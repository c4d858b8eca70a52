"""Layer L3: conversions between arithmetic and binary sharings.

* Bit injection (:func:`b2a_bits`, :func:`bit_mul`): an XOR-shared bit ``<b>`` becomes an
  arithmetic ``[b]`` — optionally multiplied by arithmetic values — in one round, with a
  dealer-made random bit known in both sharings.
* :func:`b2a`: XOR-shared 64-bit words to arithmetic sharings (one round, bit by bit).
* :func:`a2b`: arithmetic to XOR-shared words with an edaBit (one opening) and a Kogge-Stone
  adder of the public masked value and the shared mask.

Bit tensors are int64 0/1 XOR shares of any shape. On the wire bits are packed: 64 to a word
for XOR openings, or 32 (2-bit fields, so the sum of ``N <= 3`` share bits cannot carry into
the next field; wider fields for more parties) when they share an arithmetic opening with ring
values. Every party receives every other party's share in an opening anyway, so the field
layout reveals nothing beyond the opened bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from crypten_lite.protocols.binary import and_many, not_, xor_public
from crypten_lite.protocols.opening import open_shares, open_xor_shares
from crypten_lite.runtime.dealer import DealerRequest, pack_bits, padded, unpack_bits
from crypten_lite.runtime.party import Party

__all__ = [
    "a2b",
    "b2a",
    "b2a_bits",
    "bit_mul",
    "inject_masked",
    "open_masked_bits",
    "open_masked_mixed",
]

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------- helpers
def _field_width(party: Party) -> int:
    """Bits per field when share bits are summed: a power of two holding the count N."""
    w = 2
    while (1 << w) <= party.world_size:
        w *= 2
    return w


def _pack_fields(bits: Tensor, w: int) -> Tensor:
    """``(k, n)`` 0/1 -> ``(k, n * w / 64)`` words, one bit per ``w``-bit field."""
    k, n = bits.shape
    per = 64 // w
    shifts = w * torch.arange(per, dtype=torch.int64)
    return (bits.reshape(k, n // per, per) << shifts).sum(-1)


def _unpack_fields(words: Tensor, w: int) -> Tensor:
    """The low bit of each ``w``-bit field (the parity of the summed share bits)."""
    k, m = words.shape
    per = 64 // w
    shifts = w * torch.arange(per, dtype=torch.int64)
    return ((words.unsqueeze(-1) >> shifts) & 1).reshape(k, m * per)


def open_masked_bits(bits: Tensor, rho: Tensor, party: Party, *, tag: str) -> Tensor:
    """Open ``d = b ^ rho`` for ``(k, n)`` XOR-shared bits and packed mask words ``(k, n/64)``.

    Cost: 1 round; ``n / 8`` bytes per row to each peer.

    Security: reveals ``b ^ rho`` only; ``rho`` is a uniform dealer bit.
    Reference: Rotaru and Wood, INDOCRYPT'19 (daBits).
    """
    opened = open_xor_shares([pack_bits(bits) ^ rho], party, tag=tag)
    assert opened is not None
    return unpack_bits(opened[0])


def open_masked_mixed(
    bits: Tensor, rho: Tensor, values: Sequence[Tensor], party: Party, *, tag: str
) -> tuple[Tensor, list[Tensor]]:
    """Open ``d = b ^ rho`` and arithmetic ``values`` (already masked) in one message.

    The bits travel in fields of :func:`_field_width` bits inside the arithmetic opening.

    Returns:
        ``(d_pub (k, n), opened values)``.

    Cost: 1 round; ``n * w / 8`` bytes per bit row plus ``8`` per value element to each peer.
    Security: every opened value is uniformly masked by the caller's dealer masks.
    Reference: Rotaru and Wood, INDOCRYPT'19 (daBits).
    """
    w = _field_width(party)
    rho_bits = unpack_bits(rho)
    words = _pack_fields(bits ^ rho_bits, w)
    opened = open_shares([words, *values], party, tag=tag)
    assert opened is not None
    return _unpack_fields(opened[0], w), list(opened[1:])


def inject_masked(d_pub: Tensor, rho_a: Tensor, party: Party) -> Tensor:
    """``[b] = d + (1 - 2d) [rho]`` from the opened ``d = b ^ rho`` (local).

    Over the integers ``d ^ rho = d + rho - 2 d rho``; party 0 adds the public ``d``.

    Cost: local.
    Security: no messages.
    Reference: Rotaru and Wood, INDOCRYPT'19 (daBits).
    """
    out = (1 - 2 * d_pub) * rho_a
    if party.rank == 0:
        out += d_pub
    return out


def _flat_bits(bits: Tensor) -> tuple[Tensor, int]:
    flat = bits.reshape(1, -1).to(torch.int64)
    n = flat.shape[1]
    n_pad = padded(max(n, 1))
    return F.pad(flat, (0, n_pad - n)), n


# ---------------------------------------------------------------------------------- B2A
def b2a_bits(bits: Tensor, party: Party, *, tag: str = "b2a.bits") -> Tensor:
    """Arithmetic shares ``[b]`` (ring integers 0/1) of XOR-shared bits ``<b>``.

    1. Take a random bit ``rho`` from the dealer as ``<rho>`` and ``[rho]``.
    2. Open ``d = b ^ rho`` (packed 64 bits to a word).
    3. Return ``d + (1 - 2d) [rho]`` (party 0 adds ``d``).

    Args:
        bits: int64 0/1 XOR shares, any shape.

    Returns:
        int64 arithmetic shares of the bits, same shape, scale 0 (shift left by ``f`` for
        fixed-point 1.0).

    Cost: 1 round; each party sends ``numel / 8`` bytes to each peer.
    Security: semi-honest; ``rho`` uniform, so ``d`` is uniform.
    Reference: bit injection with daBits, Rotaru and Wood, INDOCRYPT'19.
    """
    flat, n = _flat_bits(bits)
    rho, _alpha, rho_a, _prod = party.dealer.fetch(
        [DealerRequest("inject", {"n": flat.shape[1], "bits": 1, "values": 0})]
    )[0]
    d_pub = open_masked_bits(flat, rho, party, tag=tag)
    return inject_masked(d_pub, rho_a, party)[0, :n].reshape(bits.shape)


def bit_mul(bits: Tensor, values: Tensor, party: Party, *, tag: str = "b2a.bit_mul") -> Tensor:
    """``[b * v]`` for XOR-shared bits ``<b>`` and arithmetic values ``[v]`` in one round.

    1. Take ``<rho>``, ``[rho]``, a uniform ``[alpha]`` and ``[alpha * rho]``.
    2. Open ``d = b ^ rho`` and ``e = v - alpha`` in one message.
    3. ``[v rho] = e [rho] + [alpha rho]``; return ``d [v] + (1 - 2d) [v rho]``.

    Args:
        bits: int64 0/1 XOR shares; broadcast with ``values`` (shapes must match after
            broadcasting).
        values: int64 arithmetic shares at any scale (the product keeps it; no truncation).

    Cost: 1 round; each party sends ``8 * numel + numel / 4`` bytes to each peer (N <= 3).
    Security: semi-honest; ``rho`` and ``alpha`` uniform, so ``d`` and ``e`` are uniform.
    Reference: Rotaru and Wood, INDOCRYPT'19 (daBits); Beaver, CRYPTO'91.
    """
    b, v = torch.broadcast_tensors(bits, values)  # type: ignore[no-untyped-call]
    shape = b.shape
    flat_b, n = _flat_bits(b)
    n_pad = flat_b.shape[1]
    flat_v = F.pad(v.reshape(1, -1), (0, n_pad - n))
    rho, alpha, rho_a, prod = party.dealer.fetch(
        [DealerRequest("inject", {"n": n_pad, "bits": 1, "values": 1, "mode": "block"})]
    )[0]
    d_pub, (e_pub,) = open_masked_mixed(flat_b, rho, [flat_v - alpha], party, tag=tag)
    v_rho = e_pub * rho_a + prod[:, 0]
    out = d_pub * flat_v + (1 - 2 * d_pub) * v_rho
    return out[0, :n].reshape(shape)


def b2a(words: Tensor, party: Party, *, tag: str = "b2a.words") -> Tensor:
    """Arithmetic shares of XOR-shared 64-bit words.

    1. Take a random word ``<rho>`` and the arithmetic shares ``[rho_i]`` of its 64 bits.
    2. Open ``d = x ^ rho``.
    3. Return ``sum_i 2**i (d_i + (1 - 2 d_i) [rho_i])`` (party 0 adds the public ``d``).

    Cost: 1 round; each party sends ``8 * numel`` bytes to each peer; the dealer's material is
    65 words per element.
    Security: semi-honest; ``rho`` uniform, so ``d`` is uniform.
    Reference: bitwise B2A with random bits (daBits), Rotaru and Wood, INDOCRYPT'19.
    """
    flat = words.reshape(-1)
    rho, rho_bits = party.dealer.fetch([DealerRequest("b2a_words", {"n": flat.numel()})])[0]
    opened = open_xor_shares([flat ^ rho], party, tag=tag)
    assert opened is not None
    d_pub = opened[0]
    d_bits = unpack_bits(d_pub.unsqueeze(-1))
    weights = 1 << torch.arange(64, dtype=torch.int64)  # 2**63 wraps to -2**63: fine mod 2**64
    out = ((1 - 2 * d_bits) * rho_bits * weights).sum(-1)
    if party.rank == 0:
        out += d_pub
    return out.reshape(words.shape)


# ---------------------------------------------------------------------------------- A2B
def a2b(x: Tensor, party: Party, *, tag: str = "a2b") -> Tensor:
    """XOR-shared words ``<x>`` of an arithmetic sharing ``[x]`` (all 64 bits).

    1. Take an edaBit: ``<r>`` and ``[r]`` of the same uniform ``r``.
    2. Open ``c = x + r``; then ``x = (c + 1) + ~r`` with no carry-in (``-r = ~r + 1``).
    3. Add the public ``a = c + 1`` and ``<b> = <~r>`` with a Kogge-Stone prefix adder:
       generate ``g = a & b`` and propagate ``p = a ^ b`` are local (``a`` is public); six
       levels ``G ^= P & (G << s)``, ``P &= P << s`` for ``s = 1, 2, ..., 32``, each level's
       ANDs in one round.
    4. Return ``p ^ (G << 1)``.

    Cost: 7 rounds (1 opening, 6 AND layers); each party sends ``8 + 11 * 16 = 184`` bytes
    per element to each peer.
    Security: semi-honest; ``r`` uniform, so ``c`` is uniform; AND masks are uniform.
    Reference: edaBits, Escudero et al., CRYPTO'20; Kogge and Stone, IEEE ToC 1973.
    """
    shape = list(x.shape)
    requests = [DealerRequest("edabits", {"shape": shape})]
    requests += [DealerRequest("binary_triple", {"shape": shape})] * 11
    batch = party.dealer.request(requests)  # the whole circuit's material, one round trip
    (r_xor,) = batch.free(0)
    items = batch.items()
    r_arith = items[0][1]
    triples = items[1:]
    opened = open_shares([x + r_arith], party, tag=tag)
    assert opened is not None
    a_pub = opened[0] + 1
    b = not_(r_xor, party)
    g = a_pub & b
    p = xor_public(b, a_pub, party)
    big_g, big_p = g, p
    for level, s in enumerate((1, 2, 4, 8, 16, 32)):
        mine = triples[2 * level : 2 * level + 2]
        if s < 32:
            big_g_part, big_p = and_many(
                [(big_p, big_g << s), (big_p, big_p << s)], party, tag=f"{tag}.and", triples=mine
            )
        else:
            (big_g_part,) = and_many(
                [(big_p, big_g << s)], party, tag=f"{tag}.and", triples=mine[:1]
            )
        big_g = big_g ^ big_g_part
    return p ^ (big_g << 1)
