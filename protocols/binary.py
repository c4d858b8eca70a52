"""Layer L3: binary (XOR) sharing over int64 words.

A binary sharing ``<x>`` of a 64-bit word is ``x = <x>_0 ^ <x>_1 ^ ... ^ <x>_{N-1}``. XOR, NOT,
shifts, rotations and AND/XOR with public words are local (a public constant is applied by party
0 only where it is XORed in). AND of two shared words consumes a binary Beaver triple; every AND
of one circuit layer is evaluated in one round by :func:`and_many`. Single bits are kept as
int64 0/1 tensors and packed 64 to a word (:func:`crypten_lite.runtime.dealer.pack_bits`) before they go
on the wire. :func:`and_k` evaluates the AND of up to six shared bits in one round with
dealer-supplied mask products (up to ten inputs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from crypten_lite.protocols.opening import open_xor_shares
from crypten_lite.runtime.dealer import AND_MAX_INPUTS, DealerRequest, pack_bits, padded
from crypten_lite.runtime.party import Party

__all__ = [
    "and_",
    "and_k",
    "and_request",
    "and_many",
    "and_public",
    "lshift",
    "not_",
    "rshift",
    "share_public_xor",
    "xor",
    "xor_public",
]


def share_public_xor(value: torch.Tensor, party: Party) -> torch.Tensor:
    """XOR shares of a public word: party 0 holds it, the others hold 0.

    Cost: local, no communication.
    Security: no messages; shares stay uniformly random.
    Reference: XOR sharing, Goldreich-Micali-Wigderson, STOC'87.
    """
    return value.clone() if party.rank == 0 else torch.zeros_like(value)


def xor(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``<x ^ y>`` (local).

    Cost: local, no communication.
    Security: no messages; shares stay uniformly random.
    Reference: XOR sharing, Goldreich-Micali-Wigderson, STOC'87.
    """
    return x ^ y


def xor_public(x: torch.Tensor, value: torch.Tensor | int, party: Party) -> torch.Tensor:
    """``<x ^ value>`` for a public ``value`` (party 0 applies it).

    Cost: local, no communication.
    Security: no messages; shares stay uniformly random.
    Reference: XOR sharing, Goldreich-Micali-Wigderson, STOC'87.
    """
    return x ^ value if party.rank == 0 else x.clone()


def not_(x: torch.Tensor, party: Party) -> torch.Tensor:
    """``<~x>`` (bitwise NOT of every word; local).

    Cost: local, no communication.
    Security: no messages; shares stay uniformly random.
    Reference: XOR sharing, Goldreich-Micali-Wigderson, STOC'87.
    """
    return xor_public(x, -1, party)


def and_public(x: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """``<x & value>`` for a public ``value`` (every party applies it; local).

    Cost: local, no communication.
    Security: no messages; shares stay uniformly random.
    Reference: XOR sharing, Goldreich-Micali-Wigderson, STOC'87.
    """
    return x & value


def lshift(x: torch.Tensor, k: int) -> torch.Tensor:
    """``<x << k>`` (local).

    Cost: local, no communication.
    Security: no messages; shares stay uniformly random.
    Reference: XOR sharing, Goldreich-Micali-Wigderson, STOC'87.
    """
    return x << k


def rshift(x: torch.Tensor, k: int) -> torch.Tensor:
    """``<x >> k>``, logical (zeros enter at the top; local).

    Cost: local, no communication.
    Security: no messages; shares stay uniformly random.
    Reference: XOR sharing, Goldreich-Micali-Wigderson, STOC'87.
    """
    if k == 0:
        return x.clone()
    return (x >> k) & ((1 << (64 - k)) - 1)


def and_many(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
    party: Party,
    *,
    tag: str = "binary.and",
    triples: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """AND of several pairs of shared words in one round (one circuit layer).

    1. Take binary triples ``<a>, <b>, <c = a & b>`` of each pair's (broadcast) shape.
    2. Open ``d = x ^ a`` and ``e = y ^ b`` of every pair in one message.
    3. Return ``<c> ^ (d & <b>) ^ (e & <a>) ^ (d & e)`` (party 0 XORs the public term).

    Args:
        pairs: ``(<x>, <y>)`` int64 word shares; each pair broadcasts to one shape.
        triples: pre-fetched ``binary_triple`` material, one item per pair (lets a caller fetch
            a whole circuit's triples in one dealer round trip).

    Cost: 1 round; each party sends ``2 * 8`` bytes per word of every pair to each peer.
    Security: semi-honest; ``a, b`` uniform, so ``d, e`` are uniform.
    Reference: Beaver, CRYPTO'91 (over GF(2)); Goldreich-Micali-Wigderson, STOC'87.
    """
    if not pairs:
        return []
    shaped = [torch.broadcast_tensors(x, y) for x, y in pairs]  # type: ignore[no-untyped-call]
    if triples is None:
        requests = [DealerRequest("binary_triple", {"shape": list(x.shape)}) for x, _ in shaped]
        triples = party.dealer.fetch(requests)
    masked = []
    for (x, y), (a, b, _) in zip(shaped, triples, strict=True):
        masked += [x ^ a, y ^ b]
    opened = open_xor_shares(masked, party, tag=tag)
    assert opened is not None
    out = []
    for i, (a, b, c) in enumerate(triples):
        d_pub, e_pub = opened[2 * i], opened[2 * i + 1]
        z = c ^ (d_pub & b) ^ (e_pub & a)
        if party.rank == 0:
            z ^= d_pub & e_pub
        out.append(z)
    return out


def and_(x: torch.Tensor, y: torch.Tensor, party: Party) -> torch.Tensor:
    """``<x & y>`` of two shared words: one AND layer, see :func:`and_many`.

    Cost: 1 round, 16 bytes per word to each peer.

    Security and reference: as :func:`and_many`.
    """
    return and_many([(x, y)], party)[0]


def and_request(groups: int, k: int) -> DealerRequest:
    """The dealer request behind :func:`and_k` for ``groups`` ANDs of ``k`` inputs.

    Cost: none (builds the request). Security and reference: as :func:`and_k`.
    """
    return DealerRequest("and_node", {"n": padded(max(groups, 1)), "k": k})


def and_k(
    bits: torch.Tensor,
    party: Party,
    *,
    tag: str = "binary.and_k",
    material: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """AND of ``k <= 10`` shared bits per group in one round (a k-input AND gate).

    With masks ``a_i`` and ``d_i = x_i ^ a_i``, the product expands over GF(2) as
    ``prod_i x_i = XOR_S (prod_{i not in S} d_i) (prod_{i in S} a_i)``: the parity of the
    dealer's subset products selected by a public word that depends on ``d`` only.

    1. Take ``<a>`` (k bits per group) and ``<P>``: bit ``S`` of ``P`` is ``prod_{i in S} a_i``
       for every subset ``S`` (``2**k`` bits).
    2. Open ``d = x ^ a`` (one byte per group; two for ``k > 8``).
    3. Return ``parity(<P> & W[d])``, ``W[d]`` having bit ``S`` = ``prod_{i not in S} d_i``.

    Args:
        bits: ``(..., k)`` int64 0/1 XOR shares; the AND runs over the last dimension.
        material: pre-fetched material of :func:`and_request` (one dealer round trip for a
            caller's whole protocol).

    Returns:
        ``(...)`` int64 0/1 XOR shares of the ANDs.

    Cost: 1 round; each party sends 1 byte (2 for ``k > 8``) per group to each peer; dealer
    material ``2**k`` bits per group.
    Security: semi-honest; ``a`` uniform, so ``d`` is uniform.
    Reference: multi-fan-in AND from preprocessed mask products, as in Damgard et al.,
    "Unconditionally secure constant-rounds multi-party computation", TCC'06 (over GF(2)).
    """
    *lead, k = bits.shape
    if not 1 <= k <= AND_MAX_INPUTS:
        raise ValueError(f"party {party.rank}: and_k takes 1 to {AND_MAX_INPUTS} inputs, got {k}")
    if k == 1:
        return bits[..., 0].clone()
    flat = bits.reshape(-1, k)
    n = flat.shape[0]
    n_pad = padded(max(n, 1))
    if material is None:
        material = party.dealer.fetch([and_request(n, k)])[0]
    masks_w, prods = material
    narrow = torch.uint8 if k <= 8 else torch.int16
    word = (flat << torch.arange(k)).sum(-1)
    if n_pad != n:
        word = torch.nn.functional.pad(word, (0, n_pad - n))
    masked = (word.to(narrow) ^ masks_w.view(narrow)).view(torch.int64)
    opened = open_xor_shares([masked], party, tag=tag)
    assert opened is not None
    d_pub = opened[0].view(narrow).to(torch.int64) & ((1 << k) - 1)
    v = (prods & _and_select(k)[d_pub]).view(n_pad, -1)
    acc = v[:, 0]
    for w in range(1, v.shape[1]):  # XOR the words (at most 16), then one parity
        acc = acc ^ v[:, w]
    return _parity64(acc)[:n].reshape(lead)


@functools.cache
def _and_select(k: int) -> torch.Tensor:
    """``(2**k, words)`` int64: for opened ``d``, bit ``S`` = ``prod_{i not in S} d_i``."""
    full = (1 << k) - 1
    d = torch.arange(1 << k, dtype=torch.int64).unsqueeze(1)
    s = torch.arange(1 << k, dtype=torch.int64)
    bits = ((d | s) == full).to(torch.int64)
    if k < 6:
        return (bits << s).sum(1, keepdim=True)
    return pack_bits(bits)


def _parity64(v: torch.Tensor) -> torch.Tensor:
    """Parity of each int64 word, as int64 0/1 (linear over XOR shares)."""
    for s in (32, 16, 8, 4, 2, 1):
        v = v ^ (v >> s)
    return v & 1
