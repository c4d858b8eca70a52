"""Layer L2: packed-bit correlations for comparisons, bit injection, multi-input AND and B2A.

The material of ``protocols/comparison.py`` and ``protocols/conversion.py`` (:data:`BIT_KINDS`).
Bits are packed into words for the PRG and the wire (:func:`pack_bits`); element counts of these
kinds are multiples of :data:`BIT_BLOCK` so every packed view is exact.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.dealer.request import ARITH, XOR, DealerStore, Shape, _count, _Kind

__all__ = [
    "AND_MAX_INPUTS",
    "BIT_BLOCK",
    "BIT_KINDS",
    "CMP_L2_E",
    "CMP_L2_G",
    "CMP_L3_G",
    "and_node_products",
    "and_words",
    "digits16",
    "node_subsets",
    "pack_bits",
    "padded",
    "pair_table",
    "subset_products",
    "unpack_bits",
]

BIT_BLOCK = 64


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`BIT_BLOCK` (64)."""
    return -(-n // BIT_BLOCK) * BIT_BLOCK


def _bit_positions() -> torch.Tensor:
    return torch.arange(64, dtype=torch.int64)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack 0/1 values (int, last dim a multiple of 64) into int64 words, bit ``i`` of word ``w``
    holding element ``64 * w + i``. XOR of packed words is the XOR of the bits."""
    *lead, m = bits.shape
    if m % 64:
        raise ValueError(f"pack_bits needs a last dimension divisible by 64, got {m}")
    words = bits.to(torch.int64).reshape(*lead, m // 64, 64) << _bit_positions()
    return words.sum(-1)  # distinct powers of two: the sum is the OR (it wraps at bit 63)


def unpack_bits(words: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int64 words ``(..., w)`` -> 0/1 int64 ``(..., 64 * w)``."""
    *lead, w = words.shape
    return ((words.unsqueeze(-1) >> _bit_positions()) & 1).reshape(*lead, 64 * w)


def digits16(words: torch.Tensor) -> torch.Tensor:
    """The sixteen 4-bit digits of each word of ``(k, n)`` int64, as ``(k, n, 16)`` int16,
    least significant first; digit 15 keeps bits 60..62 only (the comparison's 63 low bits)."""
    k, n = words.shape
    out = torch.empty((k, n, 8, 2), dtype=torch.int16)
    out[..., 0] = (words & 0x0F0F0F0F0F0F0F0F).view(torch.uint8).view(k, n, 8)
    out[..., 1] = ((words >> 4) & 0x070F0F0F0F0F0F0F).view(torch.uint8).view(k, n, 8)
    return out.view(k, n, 16)


def node_subsets(monomials: Sequence[int]) -> tuple[int, ...]:
    """Every subset of every monomial (bit masks over a node's inputs), sorted.

    A node outputs an XOR of monomials (ANDs of its inputs). With the inputs masked as
    ``d = x ^ a``, each monomial ``T`` expands as ``XOR_{S <= T} (prod_{T - S} d) (prod_S a)``,
    so the dealer deals the products ``prod_S a`` of exactly these subsets ``S``.
    """
    out: set[int] = set()
    for mono in monomials:
        sub = mono
        while True:
            out.add(sub)
            if sub == 0:
                break
            sub = (sub - 1) & mono
    return tuple(sorted(out))


# Comparison nodes (protocols/comparison.py). A node merges four children, child 3 the most
# significant, each a (greater, equal) pair, into G = G3 ^ E3 G2 ^ E3 E2 G1 ^ E3 E2 E1 G0 and
# E = E3 E2 E1 E0. Layer-2 inputs are numbered G_i -> bit 2i, E_i -> bit 2i + 1; layer-3 inputs
# (the order the protocol's bit assembly produces) E1 -> 0, G2 -> 1, G0 -> 2, E3 -> 3, G3 -> 4,
# G1 -> 5, E2 -> 6 (E_0 unused).
CMP_L2_G = (1 << 6, 1 << 7 | 1 << 4, 1 << 7 | 1 << 5 | 1 << 2, 1 << 7 | 1 << 5 | 1 << 3 | 1 << 0)
CMP_L2_E = (1 << 7 | 1 << 5 | 1 << 3 | 1 << 1,)
CMP_L3_G = (1 << 4, 1 << 3 | 1 << 1, 1 << 3 | 1 << 6 | 1 << 5, 1 << 3 | 1 << 6 | 1 << 0 | 1 << 2)


def subset_products(monomials: Sequence[int]) -> torch.Tensor:
    """``(256,)`` int64: for input masks ``a`` (8 bits), bit ``s`` is the AND of the bits of
    ``a`` in subset ``s`` of :func:`node_subsets` (the empty subset gives 1)."""
    a = torch.arange(256, dtype=torch.int64).unsqueeze(1)
    subsets = torch.tensor(node_subsets(monomials), dtype=torch.int64)
    bits = ((a & subsets) == subsets).to(torch.int64)
    return (bits << torch.arange(len(subsets))).sum(1)


def pair_table(table: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """``(65536,)`` int64: ``table[i & 255] << low | table[i >> 8] << high`` for 16-bit ``i``."""
    i = torch.arange(1 << 16, dtype=torch.int64)
    return (table[i & 255] << low) | (table[i >> 8] << high)


@functools.cache
def _cmp_products() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g2, e2 = subset_products(CMP_L2_G), subset_products(CMP_L2_E)
    g3 = subset_products(CMP_L3_G).to(torch.int32)
    return pair_table(g2, 0, 32), pair_table(e2, 32, 48), e2 << 16, g3


AND_MAX_INPUTS = 10


def and_words(k: int) -> int:
    """Words holding the ``2**k`` subset products of a ``k``-input AND node."""
    return max(1, (1 << k) // 64)


@functools.cache
def and_node_products(k: int) -> torch.Tensor:
    """``(2**k, and_words(k))`` int64: for ``k`` input masks ``a``, bit ``s`` (over the words)
    is the AND of the bits of ``a`` selected by the bit mask ``s`` (all ``2**k`` subsets)."""
    a = torch.arange(1 << k, dtype=torch.int64).unsqueeze(1)
    s = torch.arange(1 << k, dtype=torch.int64)
    bits = ((a & s) == s).to(torch.int64)
    if k < 6:
        return (bits << s).sum(1, keepdim=True)
    return pack_bits(bits)


def _block_n(p: Mapping[str, Any]) -> int:
    n = _count(p, "n", 0)
    if n % BIT_BLOCK:
        raise ProtocolError(f"dealer request field 'n' must be a multiple of {BIT_BLOCK}, got {n}")
    return n


def _cmp_layout(p: Mapping[str, Any]) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    n, k = _block_n(p), _count(p, "count")
    free = [((n,), ARITH), ((k, n // 2), XOR), ((k, n // 8), XOR), ((k, n // 64), XOR)]
    derived: list[tuple[Shape, str]] = [
        ((n, 4), XOR),
        ((k, 3 * n), XOR),
        ((k, n // 2), XOR),
        ((k, n), ARITH),
    ]
    if p.get("mul", False):
        derived.append(((k, n), ARITH))
    return free, derived


def _cmp_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], _store: DealerStore
) -> list[torch.Tensor]:
    r, m2, m3, rho = f
    k, n = m2.shape[0], r.shape[0]
    # Reversed thermometer code of each 4-bit digit r_j of r (digit 15: bits 60..62 only):
    # bit w of T_j is [r_j >= 15 - w], i.e. T_j = 0xFFFF << (15 - r_j) on 16 bits.
    therm = torch.full((1,), -1, dtype=torch.int16) << (15 - digits16(r.view(1, n))[0])
    pg2, pe23, pe1, pg3 = _cmp_products()
    # Layer 2, three words per element: G-subset products of nodes (0, 1) and (2, 3) in 32-bit
    # halves, E-subset products of nodes 1, 2, 3 in 16-bit fields 1..3.
    pairs = m2.view(torch.uint16).view(k, n, 2).to(torch.int64)  # mask bytes of nodes (0,1), (2,3)
    layer2 = torch.empty((k, n, 3), dtype=torch.int64)
    layer2[..., :2] = pg2[pairs]
    layer2[..., 2] = pe23[pairs[..., 1]] | pe1[pairs[..., 0] >> 8]
    layer2 = layer2.view(k, 3 * n)
    # Layer 3: G-subset products, msb(r) in bit 31.
    a3 = pg3[m3.view(torch.uint8).view(k, n).to(torch.int64) & 0x7F]
    a3 |= ((r >> 63) & 1).to(torch.int32) << 31
    rho_a = unpack_bits(rho)
    out = [therm.view(torch.int64).view(n, 4), layer2, a3.view(torch.int64), rho_a]
    if p.get("mul", False):
        out.append(rho_a * r)
    return out


def _inject_layout(
    p: Mapping[str, Any],
) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    n, k, v = _block_n(p), _count(p, "bits"), _count(p, "values", 0)
    mode = p.get("mode", "full")
    if mode == "full":
        prod: Shape = (k, v, n)
    elif mode == "block" and v % k == 0:
        prod = (k, v // k, n)
    else:
        raise ProtocolError(f"inject mode must be 'full' or 'block' (values % bits == 0): {p}")
    return [((k, n // 64), XOR), ((v, n), ARITH)], [((k, n), ARITH), (prod, ARITH)]


def _inject_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], _store: DealerStore
) -> list[torch.Tensor]:
    rho, alpha = f
    rho_a = unpack_bits(rho)
    k, n = rho_a.shape
    if p.get("mode", "full") == "full":
        prod = rho_a.unsqueeze(1) * alpha.unsqueeze(0)
    else:
        prod = rho_a.unsqueeze(1) * alpha.view(k, -1, n)
    return [rho_a, prod]


def _and_layout(p: Mapping[str, Any]) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    n, k = _block_n(p), _count(p, "k", 2, AND_MAX_INPUTS)
    mask_words = n // 8 if k <= 8 else n // 4
    return [((mask_words,), XOR)], [((n, and_words(k)), XOR)]


def _and_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], _store: DealerStore
) -> list[torch.Tensor]:
    k = int(p["k"])
    narrow = torch.uint8 if k <= 8 else torch.int16
    masks = f[0].view(narrow).to(torch.int64) & ((1 << k) - 1)
    return [and_node_products(k)[masks]]


def _b2a_layout(p: Mapping[str, Any]) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    n = _count(p, "n", 0)
    return [((n,), XOR)], [((n, 64), ARITH)]


BIT_KINDS: dict[str, _Kind] = {
    # Comparison material for `count` comparisons of n elements that share one mask (see
    # protocols/comparison.py): [r]; per comparison the node masks <m2> (4 nodes x 8 bits),
    # <m3> (7 bits) and injection bits <rho>; derived the digit thermometers <T> of r, the node
    # mask products <A2> (3 words), <A3> (with msb(r) in bit 31), [rho], with mul [r * rho].
    "cmp": _Kind(_cmp_layout, _cmp_derive),
    # Bit injection: <rho> (bits packed in words), [alpha] for `values` value slots; derived
    # [rho] and [rho_j * alpha_i] (every pair with mode "full", bit j with its own block of
    # values with mode "block").
    "inject": _Kind(_inject_layout, _inject_derive),
    # k-input AND (k <= 10): <a> (k mask bits per group, a byte, or 16 bits for k > 8) and
    # <products of every subset of a> (2**k bits, and_words(k) words).
    "and_node": _Kind(_and_layout, _and_derive),
    # Word B2A: <rho> (one word per element) and [bit i of rho] for i = 0..63.
    "b2a_words": _Kind(_b2a_layout, lambda p, f, _s: [unpack_bits(f[0].unsqueeze(-1))]),
}
