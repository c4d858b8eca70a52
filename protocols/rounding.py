"""Layer L3: exact rounding of fixed-point sharings to integers — floor, ceil, trunc, round.

A fixed-point value ``x = X / 2**f`` (``X`` the ring integer) has ``floor(x) = (X >> f) << f``:
clearing the ``f`` low bits of ``X`` in two's complement, for negative values too. Clearing bits
is local on a binary (XOR) sharing, so the exact route is A2B, a public AND, B2A. The other modes
need one more bit of information about the low bits, computed on the same binary words by an
AND tree (``ceil(log2(f + 1))`` rounds):

* ``ceil(x) = -floor(-x)``;
* ``trunc(x) = floor(x) + 1`` when ``x < 0`` (bit 63) and its fraction is non-zero;
* ``round(x)`` (torch: half to even) ``= floor(x + 1/2) - 1`` when ``x + 1/2`` is an integer
  (a tie) whose integer part is odd (bit ``f``): exactly torch's rule, ties included.

Every result is exact (no approximation, no truncation error).
"""

from __future__ import annotations

import torch

from crypten_lite.protocols.binary import and_, rshift, xor_public
from crypten_lite.protocols.conversion import a2b, b2a
from crypten_lite.runtime.party import Party

__all__ = ["ceil", "floor", "round_half_even", "trunc"]

Tensor = torch.Tensor


def _low_bits_zero(w: Tensor, f: int, party: Party, also: int = 0, tag: str = "rnd") -> Tensor:
    """XOR shares of one bit (bit 0): ``[low f bits of w are all 0] AND (w & also != 0)`` for
    ``also`` a single bit position mask above the low bits (0: no extra condition).

    The word ``u`` has a 1 where the condition holds bit by bit (``~w`` on the low bits, ``w`` on
    ``also``, public 1s elsewhere); then ``u &= u >> s`` for ``s = 1, 2, 4, ...`` until the
    ``f + 1`` bits are folded into bit 0: ``ceil(log2(f + 1))`` AND rounds.
    """
    low = (1 << f) - 1
    u = xor_public(w & low, low, party)  # ~w on the low bits
    if also:
        u = u ^ (w & also)
    care = low | also
    u = xor_public(u, ~care, party)  # public 1s outside the bits that matter
    s = 1
    while s < f + (1 if also else 0):
        u = and_(u, rshift(u, s), party)
        s *= 2
    return u & 1


def floor(x: Tensor, party: Party, frac_bits: int) -> Tensor:
    """``[floor(x)]`` at the same scale, exact.

    1. ``<X> = A2B([X])`` (7 rounds).
    2. Clear the ``f`` low bits: ``<X> & ~(2**f - 1)`` (local).
    3. ``B2A`` (1 round).

    Cost: 8 rounds; each party sends ``184 + 8 = 192`` bytes per element to each peer.
    Security: semi-honest, as A2B and B2A (every opened value is uniformly masked).
    Reference: edaBit A2B, Escudero et al., CRYPTO'20; daBit B2A, Rotaru and Wood,
    INDOCRYPT'19.
    """
    w = a2b(x, party, tag="floor.a2b")
    return b2a(w & ~((1 << frac_bits) - 1), party, tag="floor.b2a")


def ceil(x: Tensor, party: Party, frac_bits: int) -> Tensor:
    """``[ceil(x)] = -[floor(-x)]``, exact. Cost, security, reference: as :func:`floor`."""
    return -floor(-x, party, frac_bits)


def trunc(x: Tensor, party: Party, frac_bits: int) -> Tensor:
    """``[trunc(x)]`` (towards zero), exact.

    1. ``<X> = A2B([X])`` (7 rounds).
    2. ``<z> = <sign bit> AND NOT <low f bits all 0>`` (:func:`_low_bits_zero`, 4 rounds for
       ``f = 16``, then one AND).
    3. One B2A of ``[<X> & ~(2**f - 1), <z>]`` (1 round); return ``floor + z * 2**f``.

    Cost: 13 rounds for ``f = 16``; about ``184 + 5 * 16 + 16 = 280`` bytes per element to each
    peer.
    Security and reference: as :func:`floor`; ANDs with binary Beaver triples.
    """
    f = frac_bits
    w = a2b(x, party, tag="trunc.a2b")
    zero = _low_bits_zero(w, f, party, tag="trunc")
    negative = rshift(w, 63)
    z = and_(negative, xor_public(zero, 1, party), party)
    words = b2a(torch.stack([w & ~((1 << f) - 1), z]), party, tag="trunc.b2a")
    return words[0] + (words[1] << f)


def round_half_even(x: Tensor, party: Party, frac_bits: int) -> Tensor:
    """``[round(x)]`` with ties to even (torch's ``round``), exact.

    1. ``<Y> = A2B([X] + 2**(f-1))`` (``y = x + 1/2``; 7 rounds).
    2. ``<z> = <low f bits of Y all 0> AND <bit f of Y>``: a tie whose ``floor(y)`` is odd
       (:func:`_low_bits_zero`, 5 rounds for ``f = 16``).
    3. One B2A of ``[<Y> & ~(2**f - 1), <z>]`` (1 round); return ``floor(y) - z * 2**f``.

    Cost: 13 rounds for ``f = 16``; about ``184 + 5 * 16 + 16 = 280`` bytes per element to each
    peer.
    Security and reference: as :func:`trunc`.
    """
    f = frac_bits
    y = x.clone()
    if party.rank == 0:
        y += 1 << (f - 1)
    w = a2b(y, party, tag="round.a2b")
    z = _low_bits_zero(w, f, party, also=1 << f, tag="round")
    words = b2a(torch.stack([w & ~((1 << f) - 1), z]), party, tag="round.b2a")
    return words[0] - (words[1] << f)
