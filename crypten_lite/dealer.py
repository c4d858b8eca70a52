"""Layer L2: correlated randomness from a dealer, seed-compressed.

Every item the dealer hands out (a Beaver triple, a truncation pair, ...) is a list of
*components*, each secret-shared arithmetically (sum mod 2**64), by XOR over int64 words, or as
XOR-shared single bits. *Free* components are uniformly random; *derived* components are
functions of them (``c = a * b``).

Seed compression: party ``i`` and the dealer share an AES-CTR stream (:mod:`crypten_lite.prg`).
Party ``i`` draws its shares of every free component from that stream, and, for ``i > 0``, its
shares of the derived components too. The dealer draws the same streams, so it knows every
share, reconstructs the free values, computes the derived values and sends party 0 only the
*correction* ``derived - sum_{i>0} derived_i``. Dealer traffic is therefore one derived-size
tensor per item, to party 0 only (8 bytes per element of ``c`` for an elementwise triple), and
parties ``1..N-1`` never exchange a message with the dealer after set-up.

Two dealers:

* :class:`TrustedThirdParty` — a separate dealer process (``crypten-lite launch --dealer``). It
  never sees an input and must not collude with any party.
* :class:`TrustedFirstParty` — INSECURE, for tests and debugging: party 0 plays the dealer, so it
  knows every party's masks and can unmask every opened value. No messages at all.

Draw order is part of the protocol: for each item, party ``i`` draws its free components in
order, then (``i > 0``) its derived components in order. Small items (up to 4096 elements in
all) are drawn with one keystream call and split into views; the bytes are the same.

Latency: :meth:`Dealer.request` hands out the free components at once and the derived ones on
demand (:class:`DealerBatch`). Party 0 of a dealer process sends its request first and collects
the reply after the protocol's opening round; party 0 of the trusted first party replays the
other parties' streams only then. Either way the dealing overlaps with the parties' round.

Fixed operands (a weight multiplied by many inputs): ``fixed_mask`` deals a uniform ``[b]`` that
the dealer *keeps* (reconstructed from the seeds, so it is still seed-compressed and the dealer
never sees the weight); each later ``fixed_triple`` deals a fresh ``[a]`` and ``[c = op(a, b)]``
with that stored ``b``, so the parties open the weight's masked value ``y - b`` once and only
the activation's mask per product. ``fixed_release`` forgets a stored mask. Handles are
consecutive integers that every party assigns in the same (SPMD) order.
"""

from __future__ import annotations

import functools
import json
import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from crypten_lite.comm import Communicator
from crypten_lite.errors import PartyTimeoutError, ProtocolError
from crypten_lite.prg import PRG
from crypten_lite.ring import (
    bilinear,
    bilinear_output_shape,
    freeze_params,
    logical_rshift,
    msb,
)

__all__ = [
    "AND_MAX_INPUTS",
    "BIT_BLOCK",
    "Dealer",
    "DealerRequest",
    "DealerStore",
    "TrustedFirstParty",
    "TrustedThirdParty",
    "and_node_products",
    "and_words",
    "digits16",
    "node_subsets",
    "pack_bits",
    "padded",
    "pair_table",
    "serve_dealer",
    "subset_products",
    "unpack_bits",
]

ARITH, XOR, BIT = "arith", "xor", "bit"
Shape = tuple[int, ...]
_MAX_REQUEST_ELEMENTS = 1 << 31
_MAX_STORED_ELEMENTS = 1 << 31
_MERGED_DRAW_ELEMENTS = 4096
Layout = tuple[tuple[tuple[Shape, str], ...], tuple[tuple[Shape, str], ...]]


class DealerStore:
    """The dealer's state across requests: the masks of fixed operands, by handle.

    Bounded (``2**31`` elements in all) because requests come from a peer.
    """

    def __init__(self) -> None:
        self._masks: dict[int, torch.Tensor] = {}
        self._elements = 0

    def __len__(self) -> int:
        return len(self._masks)

    def put(self, handle: int, mask: torch.Tensor) -> None:
        if handle in self._masks:
            raise ProtocolError(f"fixed mask #{handle} is already stored")
        if self._elements + mask.numel() > _MAX_STORED_ELEMENTS:
            raise ProtocolError("the dealer stores too many fixed masks; release some")
        self._masks[handle] = mask
        self._elements += mask.numel()

    def get(self, handle: int, shape: Shape) -> torch.Tensor:
        mask = self._masks.get(handle)
        if mask is None:
            raise ProtocolError(f"no fixed mask #{handle} (never dealt, or released)")
        if tuple(mask.shape) != tuple(shape):
            raise ProtocolError(
                f"fixed mask #{handle} has shape {tuple(mask.shape)}, request says {tuple(shape)}"
            )
        return mask

    def pop(self, handle: int) -> None:
        mask = self._masks.pop(handle, None)
        if mask is not None:
            self._elements -= mask.numel()


@dataclass(frozen=True)
class DealerRequest:
    """One item of correlated randomness: a kind and its JSON-serialisable parameters."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    @staticmethod
    def from_json(obj: Any) -> DealerRequest:
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise ProtocolError(f"malformed dealer request {str(obj)[:80]!r}")
        params = {k: v for k, v in obj.items() if k != "kind"}
        return DealerRequest(obj["kind"], params)


@dataclass(frozen=True)
class _Kind:
    """How to lay out and derive one kind of item.

    ``derive(params, free_values, store)`` returns tensors the caller may update in place:
    fresh ones, or ``free_values`` themselves (which are the caller's scratch and may be
    overwritten; only ``fixed_mask`` keeps one, unmodified).
    """

    layout: Callable[[Mapping[str, Any]], tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]]
    derive: Callable[[Mapping[str, Any], list[torch.Tensor], DealerStore], list[torch.Tensor]]


def _shape(params: Mapping[str, Any], key: str) -> Shape:
    value = params.get(key)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and d >= 0 for d in value
    ):
        raise ProtocolError(f"dealer request field {key!r} is not a shape: {value!r}")
    return tuple(value)


def _handle(params: Mapping[str, Any]) -> int:
    value = params.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"dealer request field 'id' is not a handle: {value!r}")
    return value


def _triple_layout(p: Mapping[str, Any]) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    a, b = _shape(p, "a_shape"), _shape(p, "b_shape")
    c = bilinear_output_shape(p["op"], a, b, p.get("op_params"))
    return [(a, ARITH), (b, ARITH)], [(c, ARITH)]


def _triple_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], store: DealerStore
) -> list[torch.Tensor]:
    if p["op"] == "mul" and f[0].shape == f[1].shape:
        return [f[0].mul_(f[1])]  # the totals are the dealer's own scratch: no allocation
    return [bilinear(p["op"], f[0], f[1], p.get("op_params"))]


def _fixed_side(p: Mapping[str, Any]) -> str:
    side = p.get("fixed")
    if side not in ("a", "b"):
        raise ProtocolError(f"dealer request field 'fixed' must be 'a' or 'b', got {side!r}")
    return str(side)


def _fixed_triple_layout(
    p: Mapping[str, Any],
) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    # Only the moving operand's mask is free; the fixed one is the stored mask.
    _handle(p)
    a, b = _shape(p, "a_shape"), _shape(p, "b_shape")
    c = bilinear_output_shape(p["op"], a, b, p.get("op_params"))
    moving = a if _fixed_side(p) == "b" else b
    return [(moving, ARITH)], [(c, ARITH)]


def _fixed_triple_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], store: DealerStore
) -> list[torch.Tensor]:
    if _fixed_side(p) == "b":
        fixed = store.get(_handle(p), _shape(p, "b_shape"))
        return [bilinear(p["op"], f[0], fixed, p.get("op_params"))]
    fixed = store.get(_handle(p), _shape(p, "a_shape"))
    return [bilinear(p["op"], fixed, f[0], p.get("op_params"))]


def _fixed_mask_layout(
    p: Mapping[str, Any],
) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    _handle(p)
    return [(_shape(p, "shape"), ARITH)], []


def _fixed_release_layout(
    p: Mapping[str, Any],
) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    _handle(p)
    return [], []


def _fixed_mask_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], store: DealerStore
) -> list[torch.Tensor]:
    store.put(_handle(p), f[0])
    return []


def _fixed_release_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], store: DealerStore
) -> list[torch.Tensor]:
    store.pop(_handle(p))
    return []


# ----------------------------------------------------------------------------------------------
# Correlations for comparisons, bit injection and multi-input AND (protocols/comparison.py,
# protocols/conversion.py). Bits are packed into words for the PRG and the wire; element counts
# of these kinds are multiples of BIT_BLOCK so every packed view is exact.

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


def _count(p: Mapping[str, Any], key: str, low: int = 1, high: int = 1 << 31) -> int:
    value = p.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"dealer request field {key!r} must be an int in [{low}, {high}]")
    return value


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


_KINDS: dict[str, _Kind] = {
    # Beaver triple for a bilinear op: [a], [b], [c = op(a, b)].
    "triple": _Kind(_triple_layout, _triple_derive),
    # Square pair: [a], [a * a].
    "square": _Kind(
        lambda p: ([(_shape(p, "shape"), ARITH)], [(_shape(p, "shape"), ARITH)]),
        lambda p, f, _s: [f[0].mul_(f[0])],
    ),
    # Binary (AND) triple over int64 words: <a>, <b>, <a & b>.
    "binary_triple": _Kind(
        lambda p: (
            [(_shape(p, "shape"), XOR), (_shape(p, "shape"), XOR)],
            [(_shape(p, "shape"), XOR)],
        ),
        lambda p, f, _s: [f[0] & f[1]],
    ),
    # Truncation pair: [r] uniform, [r >> f] (logical shift), [msb(r)] (see protocols).
    "trunc": _Kind(
        lambda p: (
            [(_shape(p, "shape"), ARITH)],
            [(_shape(p, "shape"), ARITH), (_shape(p, "shape"), ARITH)],
        ),
        lambda p, f, _s: [logical_rshift(f[0], int(p["frac_bits"])), msb(f[0])],
    ),
    # edaBits over the full ring: <r> bitwise and [r] arithmetically, the same uniform r.
    "edabits": _Kind(
        lambda p: ([(_shape(p, "shape"), XOR)], [(_shape(p, "shape"), ARITH)]),
        lambda p, f, _s: [f[0].clone()],
    ),
    # Random shared bits: <b> (one bit) and [b], b uniform in {0, 1}.
    "random_bits": _Kind(
        lambda p: ([(_shape(p, "shape"), BIT)], [(_shape(p, "shape"), ARITH)]),
        lambda p, f, _s: [f[0].clone()],
    ),
    # Mask of a fixed operand: [b] uniform, kept by the dealer under handle `id`.
    "fixed_mask": _Kind(_fixed_mask_layout, _fixed_mask_derive),
    # Triple with a stored fixed mask: [a] fresh, [c = op(a, b_id)] (or op(b_id, a)).
    "fixed_triple": _Kind(_fixed_triple_layout, _fixed_triple_derive),
    # Forget a stored fixed mask (no components).
    "fixed_release": _Kind(_fixed_release_layout, _fixed_release_derive),
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


_LAYOUTS: dict[tuple[str, tuple[tuple[str, Any], ...]], Layout] = {}
_MAX_CACHED_LAYOUTS = 4096


def _layout(request: DealerRequest) -> Layout:
    """The (free, derived) component shapes and sharings of a request, validated.

    Cached per (kind, params): shape inference for convolutions costs about a millisecond.
    """
    layout = request.__dict__.get("_layout")
    if layout is not None:
        return layout  # type: ignore[no-any-return]
    try:
        key = (request.kind, freeze_params(request.params))
        layout = _LAYOUTS.get(key)
    except (TypeError, AttributeError):
        raise ProtocolError(f"invalid dealer request {str(request.to_json())[:80]}") from None
    if layout is not None:
        object.__setattr__(request, "_layout", layout)
        return layout
    kind = _KINDS.get(request.kind)
    if kind is None:
        raise ProtocolError(f"unknown dealer request kind {request.kind!r}")
    try:
        free, derived = kind.layout(request.params)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad op name or shapes from a peer
        raise ProtocolError(f"invalid dealer request {request.to_json()}: {exc}") from None
    total = sum(math.prod(s) for s, _ in free + derived)
    if total > _MAX_REQUEST_ELEMENTS:
        raise ProtocolError(f"dealer request of {total} elements is too large")
    if len(_LAYOUTS) >= _MAX_CACHED_LAYOUTS:
        _LAYOUTS.clear()
    layout = _LAYOUTS[key] = (tuple(free), tuple(derived))
    object.__setattr__(request, "_layout", layout)
    return layout


def _draw(prg: PRG, shape: Shape, sharing: str) -> torch.Tensor:
    return prg.random_bits(shape) if sharing == BIT else prg.random_int64(shape)


def _combine_(total: torch.Tensor, part: torch.Tensor, sharing: str) -> None:
    if sharing == ARITH:
        total += part
    else:
        total ^= part


def party_draw(
    prg: PRG, request: DealerRequest, rank: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The shares party ``rank`` draws itself: all free ones, and the derived ones if rank > 0."""
    free, derived = _layout(request)
    comps = free if rank == 0 else (*free, *derived)
    sizes = [math.prod(s) for s, _ in comps]
    total = sum(sizes)
    if total > _MERGED_DRAW_ELEMENTS or len(comps) < 2:
        shares = [_draw(prg, s, k) for s, k in comps]
    else:
        # Small items: one keystream call for all components (the same bytes, in the same
        # order), split into views. Large items get a tensor each, so that a kept component
        # does not keep the others' memory alive.
        flat = prg.random_int64((total,))
        shares, offset = [], 0
        for (shape, kind), n in zip(comps, sizes, strict=True):
            part = flat[offset : offset + n].view(shape)
            if kind == BIT:
                part &= 1
            shares.append(part)
            offset += n
    return shares[: len(free)], shares[len(free) :]


def dealer_corrections(
    prgs: Sequence[PRG], request: DealerRequest, store: DealerStore | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Replay every party's draws and compute party 0's derived shares.

    Args:
        prgs: the dealer's stream with each party, indexed by rank.
        store: the dealer's state (fixed masks); needed by the ``fixed_*`` kinds.

    Returns:
        (party 0's free shares, party 0's derived shares = the corrections).
    """
    party0_free, _ = party_draw(prgs[0], request, 0)
    return party0_free, _corrections(prgs, request, party0_free, store)


def _corrections(
    prgs: Sequence[PRG],
    request: DealerRequest,
    party0_free: Sequence[torch.Tensor],
    store: DealerStore | None,
) -> list[torch.Tensor]:
    """Party 0's derived shares, given its free shares (read, not modified) and the other
    parties' streams (drawn here)."""
    free, derived = _layout(request)
    totals: list[torch.Tensor] | None = None
    others: list[torch.Tensor] | None = None
    # Parties 1..N-1 first: their drawn tensors are fresh, so the sums accumulate in place into
    # them (party 0's own draws are returned, so they are added last, without a copy).
    for rank in range(1, len(prgs)):
        shares, rest = party_draw(prgs[rank], request, rank)
        if totals is None:
            totals, others = shares, rest
            continue
        for t, s, (_, k) in zip(totals, shares, free, strict=True):
            _combine_(t, s, k)
        for o, s, (_, k) in zip(others or [], rest, derived, strict=True):
            _combine_(o, s, k)
    if totals is None:
        totals = [t.clone() for t in party0_free]
    else:
        for t, s, (_, k) in zip(totals, party0_free, free, strict=True):
            _combine_(t, s, k)
    values = _KINDS[request.kind].derive(
        request.params, totals, store if store is not None else DealerStore()
    )
    if others is not None:
        for v, o, (_, k) in zip(values, others, derived, strict=True):
            if k == ARITH:
                v -= o
            else:
                v ^= o
    return values


class DealerBatch:
    """The material of a batch of requests, free components first (see :meth:`Dealer.request`).

    Free components are drawn locally, so :meth:`free` is available at once; :meth:`item` (free
    then derived components) may wait for the dealer process, or (party 0 of the trusted first
    party) compute them only then. A protocol opens its masked values between the two, so the
    dealer's work and round trip overlap with the parties' round.

    Contract: do not modify the free components before :meth:`item` has been called for them
    (the trusted first party reads them to derive the rest); afterwards they are the caller's.
    """

    __slots__ = ("_free", "_items", "_finish")

    def __init__(
        self,
        free: list[list[torch.Tensor]],
        items: list[list[torch.Tensor]] | None = None,
        finish: Callable[[], list[list[torch.Tensor]]] | None = None,
    ) -> None:
        self._free = free
        self._items = items
        self._finish = finish

    def __len__(self) -> int:
        return len(self._free)

    def free(self, i: int = 0) -> list[torch.Tensor]:
        """This party's shares of item ``i``'s free components."""
        return self._free[i]

    def item(self, i: int = 0) -> list[torch.Tensor]:
        """All components of item ``i`` (waits for the dealer process the first time)."""
        return self.items()[i]

    def items(self) -> list[list[torch.Tensor]]:
        if self._items is None:
            assert self._finish is not None
            self._items, self._finish = self._finish(), None
        return self._items


class Dealer(ABC):
    """Source of correlated randomness for one party.

    ``fetch`` returns this party's shares of each requested item: free components, then derived
    components; ``request`` returns them as a :class:`DealerBatch` whose derived part may still
    be on its way. Convenience methods name the common items.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self._next_handle = 0

    @abstractmethod
    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        """This party's shares of each request's components (free first, then derived)."""

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        """Like :meth:`fetch`, but derived components may arrive later (:class:`DealerBatch`).

        Batches complete in order: completing one completes every earlier batch first.
        """
        items = self.fetch(requests)
        free = [item[: len(_layout(r)[0])] for r, item in zip(requests, items, strict=True)]
        return DealerBatch(free, items)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Tell the dealer this party is done (party 0 of a dealer process)."""

    def get(self, kind: str, **params: Any) -> list[torch.Tensor]:
        return self.fetch([DealerRequest(kind, params)])[0]

    def triple(
        self, op: str, a_shape: Shape, b_shape: Shape, op_params: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Beaver triple ``[a], [b], [c = op(a, b)]`` for a bilinear op of :mod:`~crypten_lite.ring`."""
        a, b, c = self.get(
            "triple",
            op=op,
            a_shape=list(a_shape),
            b_shape=list(b_shape),
            op_params=dict(op_params or {}),
        )
        return a, b, c

    def square(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``[a], [a*a]``."""
        a, a2 = self.get("square", shape=list(shape))
        return a, a2

    def binary_triple(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """XOR-shared ``<a>, <b>, <a & b>`` over int64 words."""
        a, b, c = self.get("binary_triple", shape=list(shape))
        return a, b, c

    def truncation_pair(
        self, shape: Shape, frac_bits: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[r], [r >> f] (logical), [msb(r)]`` with ``r`` uniform in Z_2^64."""
        r, r_hi, r_msb = self.get("trunc", shape=list(shape), frac_bits=frac_bits)
        return r, r_hi, r_msb

    def edabits(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``<r>`` (XOR words) and ``[r]`` (arithmetic) of the same uniform ``r``."""
        r_xor, r_arith = self.get("edabits", shape=list(shape))
        return r_xor, r_arith

    def random_bits(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``<b>`` (XOR of 0/1 values) and ``[b]`` of the same uniform bit ``b``."""
        b_xor, b_arith = self.get("random_bits", shape=list(shape))
        return b_xor, b_arith

    def fixed_mask(self, shape: Shape) -> tuple[int, torch.Tensor]:
        """A uniform ``[b]`` that the dealer keeps for later :meth:`fixed_triple` requests.

        Returns:
            (handle, this party's share of ``b``). Every party gets the same handle, since
            every party calls this in the same order.
        """
        handle = self._next_handle
        self._next_handle += 1
        (b,) = self.get("fixed_mask", id=handle, shape=list(shape))
        return handle, b

    def fixed_triple_request(
        self,
        op: str,
        a_shape: Shape,
        b_shape: Shape,
        handle: int,
        *,
        fixed: str = "b",
        op_params: Mapping[str, Any] | None = None,
    ) -> DealerRequest:
        """The request for :meth:`fixed_triple` (to batch it with others in :meth:`fetch`)."""
        return DealerRequest(
            "fixed_triple",
            {
                "op": op,
                "a_shape": list(a_shape),
                "b_shape": list(b_shape),
                "id": handle,
                "fixed": fixed,
                "op_params": dict(op_params or {}),
            },
        )

    def fixed_triple(
        self,
        op: str,
        a_shape: Shape,
        b_shape: Shape,
        handle: int,
        *,
        fixed: str = "b",
        op_params: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[m]`` fresh and ``[c]``, where ``c = op(m, b)`` (``fixed="b"``) or ``op(b, m)``
        (``fixed="a"``) with the stored mask ``b`` of ``handle``."""
        m, c = self.fetch(
            [
                self.fixed_triple_request(
                    op, a_shape, b_shape, handle, fixed=fixed, op_params=op_params
                )
            ]
        )[0]
        return m, c

    def release_fixed(self, handle: int) -> None:
        """Let the dealer forget a fixed mask (sent with the next request; no round of its own)."""
        self._release(DealerRequest("fixed_release", {"id": int(handle)}))

    def _release(self, request: DealerRequest) -> None:  # noqa: B027 - only party 0 acts
        """Forward a component-less request to the dealer side."""


class TrustedFirstParty(Dealer):
    """INSECURE dealer for tests and debugging: party 0 knows every party's dealer stream.

    Party 0 can therefore reconstruct every mask and unmask every opened value. Costs no
    messages. Never use it where party 0 must not learn the other parties' inputs.
    """

    def __init__(
        self, rank: int, world_size: int, own: PRG, all_streams: Sequence[PRG] | None
    ) -> None:
        super().__init__(rank, world_size)
        if rank == 0 and (all_streams is None or len(all_streams) != world_size):
            raise ValueError("party 0 of TrustedFirstParty needs every party's stream")
        self._own = own
        self._all = all_streams
        self._store = DealerStore()
        self._inflight: deque[DealerBatch] = deque()

    def _release(self, request: DealerRequest) -> None:
        if self.rank == 0:
            assert self._all is not None
            self._drain()
            dealer_corrections(self._all, request, self._store)

    def _drain(self) -> None:
        while self._inflight:
            self._inflight[0].items()

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        return self.request(requests).items()

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        if self.rank != 0:
            drawn = [party_draw(self._own, r, self.rank) for r in requests]
            return DealerBatch([f for f, _ in drawn], [f + d for f, d in drawn])
        # Party 0 draws its own free shares now and replays the other parties' streams only
        # when the derived shares are asked for: after the protocol has sent its masked values,
        # so the peers do not wait for the dealing. Batches complete in request order (each
        # party's stream is read in order).
        assert self._all is not None
        free = [party_draw(self._all[0], r, 0)[0] for r in requests]
        batch = DealerBatch(free, finish=lambda: self._complete(requests, free, batch))
        self._inflight.append(batch)
        return batch

    def _complete(
        self, requests: Sequence[DealerRequest], free: list[list[torch.Tensor]], batch: DealerBatch
    ) -> list[list[torch.Tensor]]:
        assert self._all is not None
        while self._inflight and self._inflight[0] is not batch:
            self._inflight[0].items()
        if self._inflight:
            self._inflight.popleft()
        return [
            f + _corrections(self._all, r, f, self._store)
            for r, f in zip(requests, free, strict=True)
        ]


_REQUEST_TAG = "dealer.request"
_REPLY_TAG = "dealer.reply"


def _encode_requests(requests: Sequence[DealerRequest]) -> torch.Tensor:
    raw = json.dumps([r.to_json() for r in requests], separators=(",", ":")).encode("utf-8")
    return (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )


def _decode_requests(tensor: torch.Tensor) -> list[DealerRequest]:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ProtocolError("dealer request must be a 1-d uint8 tensor of JSON")
    try:
        items = json.loads(bytes(tensor.numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"dealer request is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ProtocolError("dealer request must be a JSON list")
    return [DealerRequest.from_json(item) for item in items]


class TrustedThirdParty(Dealer):
    """The client side of the dealer process (see the module docstring).

    Party 0 sends the batch of requests to the dealer and receives its corrections, one round
    trip; every other party draws everything locally and sends nothing.
    """

    def __init__(self, rank: int, world_size: int, own: PRG, comm: Communicator) -> None:
        super().__init__(rank, world_size)
        if not comm.has_dealer:
            raise ValueError("TrustedThirdParty needs a communicator connected to a dealer")
        self._own = own
        self._comm = comm
        self._closed = False
        self._pending: list[DealerRequest] = []
        self._inflight: deque[DealerBatch] = deque()

    def _release(self, request: DealerRequest) -> None:
        if self.rank == 0:
            self._pending.append(request)

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        return self.request(requests).items()

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        drawn = [party_draw(self._own, r, self.rank) for r in requests]
        free = [f for f, _ in drawn]
        if self.rank != 0:
            return DealerBatch(free, [f + d for f, d in drawn])
        # Pending releases have no components: they ride along in front of this batch.
        pending, self._pending = self._pending, []
        self._comm.send(
            self._comm.dealer_rank, _encode_requests([*pending, *requests]), _REQUEST_TAG
        )
        batch = DealerBatch(free, finish=lambda: self._receive(requests, free, batch))
        self._inflight.append(batch)
        return batch

    def _receive(
        self, requests: Sequence[DealerRequest], free: list[list[torch.Tensor]], batch: DealerBatch
    ) -> list[list[torch.Tensor]]:
        # Replies come in request order: complete every earlier batch first.
        while self._inflight and self._inflight[0] is not batch:
            self._inflight[0].items()
        if self._inflight:
            self._inflight.popleft()
        flat = self._comm.recv(self._comm.dealer_rank, _REPLY_TAG)
        out, offset = [], 0
        for request, f in zip(requests, free, strict=True):
            corrections = []
            for shape, _kind in _layout(request)[1]:
                n = math.prod(shape)
                corrections.append(flat[offset : offset + n].reshape(shape))
                offset += n
            out.append(f + corrections)
        if offset != flat.numel():
            raise ProtocolError(
                f"party 0: dealer reply has {flat.numel()} elements, expected {offset}"
            )
        return out

    def close(self) -> None:
        if self.rank == 0 and not self._closed:
            self._closed = True
            while self._inflight:  # collect replies nobody waited for
                self._inflight[0].items()
            self._comm.send(
                self._comm.dealer_rank, _encode_requests([DealerRequest("shutdown")]), _REQUEST_TAG
            )


def serve_dealer(
    comm: Communicator, streams: Sequence[PRG], *, idle_timeout_s: float | None = None
) -> int:
    """Run the dealer: answer party 0's requests until it says ``shutdown``.

    Args:
        comm: the dealer's communicator (rank ``world_size``).
        streams: the dealer's PRG with each party, indexed by rank.
        idle_timeout_s: give up after this long without a request (``None``: wait forever; the
            launcher stops the dealer when the parties exit).

    Returns:
        The number of items served.
    """
    served = 0
    idle = 0.0
    store = DealerStore()
    while True:
        try:
            payload = comm.recv(0, _REQUEST_TAG)
        except PartyTimeoutError:
            idle += comm.timeout_s
            if idle_timeout_s is not None and idle >= idle_timeout_s:
                raise
            continue
        idle = 0.0
        requests = _decode_requests(payload)
        if any(r.kind == "shutdown" for r in requests):
            return served
        corrections = [c for r in requests for c in dealer_corrections(streams, r, store)[1]]
        flat = (
            torch.cat([c.reshape(-1) for c in corrections])
            if corrections
            else torch.empty(0, dtype=torch.int64)
        )
        comm.send(0, flat, _REPLY_TAG)
        served += len(requests)
