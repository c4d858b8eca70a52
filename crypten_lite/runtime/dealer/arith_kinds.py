"""Layer L2: request kinds for products, truncation, share conversion and fixed operands.

These kinds take tensor shapes (one component element per value): Beaver triples for every
bilinear op of :mod:`crypten_lite.runtime.ring` and their XOR counterpart, square pairs, truncation
pairs, edaBits and random shared bits (:data:`ARITH_KINDS`), and the ``fused`` items of
:mod:`crypten_lite.protocols.fused` (exact truncations opened in the next product's round):
per operand a uniform mask, per pending operand its truncation pair, per product the cross
terms of the operands' masks (:func:`fused_terms` counts them; with the optional operand
``shapes`` they broadcast like torch, so a per-row operand has one mask per row).

Fixed operands (a weight multiplied by many inputs): ``fixed_mask`` deals a uniform ``[b]`` that
the dealer *keeps* (reconstructed from the seeds, so it is still seed-compressed and the dealer
never sees the weight); each later ``fixed_triple`` deals a fresh ``[a]`` and ``[c = op(a, b)]``
with that stored ``b``, so the parties open the weight's masked value ``y - b`` once and only
the activation's mask per product. ``fixed_release`` forgets a stored mask. Handles are
consecutive integers that every party assigns in the same (SPMD) order
(:meth:`~crypten_lite.runtime.dealer.Dealer.fixed_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.dealer.request import (
    ARITH,
    BIT,
    XOR,
    DealerStore,
    Shape,
    _handle,
    _Kind,
    _shape,
)
from crypten_lite.runtime.ring import bilinear, bilinear_output_shape, logical_rshift, msb

__all__ = ["ARITH_KINDS", "broadcast_shape", "fused_terms"]


def broadcast_shape(a: Shape, b: Shape) -> Shape:
    """torch's broadcast of two shapes (``torch.broadcast_shapes`` is Python-heavy: this is
    on every fused product's path). Raises ``ValueError`` when they do not broadcast."""
    if a == b:
        return a
    n = max(len(a), len(b))
    pa, pb = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(pa, pb, strict=True):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(y if x == 1 else x)
    return tuple(out)


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


def _fused_spec(
    p: Mapping[str, Any],
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[Shape] | None, list[int]]:
    """Validated ``operands`` (``[numel, bits]``, bits 0 = plain), ``products`` (``[i, j]``),
    the optional operand ``shapes`` (products then broadcast, like torch) and the number of
    elements of each product."""
    ops, prods = p.get("operands"), p.get("products")
    if not isinstance(ops, list) or not isinstance(prods, list) or not ops or len(ops) > 4096:
        raise ProtocolError("dealer request 'fused' needs lists 'operands' and 'products'")
    operands: list[tuple[int, int]] = []
    for o in ops:
        if not (
            isinstance(o, list)
            and len(o) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in o)
            and 0 <= o[0] < 1 << 40
            and 0 <= o[1] <= 62
        ):
            raise ProtocolError(f"dealer request 'fused': bad operand {str(o)[:40]!r}")
        operands.append((o[0], o[1]))
    shapes: list[Shape] | None = None
    if "shapes" in p:
        raw = p["shapes"]
        if not isinstance(raw, list) or len(raw) != len(operands):
            raise ProtocolError("dealer request 'fused': 'shapes' must give one shape per operand")
        shapes = [_shape({"s": sh}, "s") for sh in raw]
        if any(math.prod(sh) != n for sh, (n, _) in zip(shapes, operands, strict=True)):
            raise ProtocolError("dealer request 'fused': a shape does not match its operand")
    products: list[tuple[int, int]] = []
    sizes: list[int] = []
    for q in prods:
        if not (
            isinstance(q, list)
            and len(q) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in q)
            and 0 <= q[0] <= q[1] < len(operands)
        ):
            raise ProtocolError(f"dealer request 'fused': bad product {str(q)[:40]!r}")
        if shapes is None:
            if operands[q[0]][0] != operands[q[1]][0]:
                raise ProtocolError(f"dealer request 'fused': bad product {str(q)[:40]!r}")
            sizes.append(operands[q[0]][0])
        else:
            try:
                bshape = broadcast_shape(shapes[q[0]], shapes[q[1]])
            except ValueError:
                raise ProtocolError(f"dealer request 'fused': bad product {q!r}") from None
            if math.prod(bshape) >= 1 << 40:
                raise ProtocolError(f"dealer request 'fused': product {q!r} is too large")
            sizes.append(math.prod(bshape))
        products.append((q[0], q[1]))
    return operands, products, shapes, sizes


def fused_terms(ki: int, kj: int, square: bool) -> int:
    """Number of cross-term components of one fused product (see ``_fused_derive``)."""
    if square:
        return 1 if ki == 0 else 2
    n_i, n_j = (1 if ki == 0 else 2), (1 if kj == 0 else 2)
    n = n_i * n_j
    # [s s'] is multiplied by 2**(128 - k - k') in the protocol: 0 mod 2**64 unless k + k' > 64
    return n - 1 if ki and kj and ki + kj <= 64 else n


def _fused_layout(p: Mapping[str, Any]) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    operands, products, _, sizes = _fused_spec(p)
    free: list[tuple[Shape, str]] = [((n,), ARITH) for n, _ in operands]
    derived: list[tuple[Shape, str]] = [((n,), ARITH) for n, k in operands if k for _ in range(2)]
    for (i, j), n in zip(products, sizes, strict=True):
        derived += [((n,), ARITH)] * fused_terms(operands[i][1], operands[j][1], i == j)
    return free, derived


def _fused_derive(
    p: Mapping[str, Any], f: list[torch.Tensor], store: DealerStore
) -> list[torch.Tensor]:
    # Per operand i with mask u_i: plain (bits 0) has the basis [u_i]; pending (bits k) has
    # [u_hi = u >> k (logical), s = msb(u)]. Per product: the products of basis elements that
    # the protocol needs (protocols/fused.py): plain x plain [u u'], pending x plain
    # [hi u'], [s u'], pending x pending [hi hi'], [hi s'], [s hi'] (and [s s'] when
    # k + k' > 64); squares: [u**2], or [hi**2], [hi s] (s**2 = s needs no component).
    operands, products, shapes, _ = _fused_spec(p)
    if shapes is not None:  # products broadcast over the operands' shapes
        f = [u.view(sh) for u, sh in zip(f, shapes, strict=True)]
    out: list[torch.Tensor] = []
    basis: list[list[torch.Tensor]] = []
    for (_, k), u in zip(operands, f, strict=True):
        if k:
            hi, s = logical_rshift(u, k), msb(u)
            out += [hi, s]
            basis.append([hi, s])
        else:
            basis.append([u])
    for i, j in products:
        bi, bj = basis[i], basis[j]
        if i == j:
            out += [bi[0] * bi[0]] if len(bi) == 1 else [bi[0] * bi[0], bi[0] * bi[1]]
            continue
        terms = [x * y for x in bi for y in bj]
        if len(bi) == 2 and len(bj) == 2 and operands[i][1] + operands[j][1] <= 64:
            terms.pop()  # [s s']: see fused_terms
        out += terms
    return [t.reshape(-1) for t in out]


ARITH_KINDS: dict[str, _Kind] = {
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
    # Fused truncation and products (protocols/fused.py): per operand a uniform mask, per
    # pending operand its truncation pair's [u >> k], [msb(u)], per product the cross terms.
    "fused": _Kind(_fused_layout, _fused_derive),
    # Forget a stored fixed mask (no components).
    "fixed_release": _Kind(_fixed_release_layout, _fixed_release_derive),
}
