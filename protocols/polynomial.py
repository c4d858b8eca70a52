"""Layer L3: fixed-point building blocks of the approximations — batched products with chosen
truncations, power ladders, polynomial evaluation, fitted coefficients, and normalisation of a
positive value to a mantissa in ``[1, 2**step)`` times a power of two.

Scales: a share "at scale ``S``" encodes ``v * 2**S``; the session's fixed-point scale is
``f = party.frac_bits``. Internal computations run a few bits above ``f`` (``f + 4``) so that
polynomial and Newton steps lose less than one output ulp, while every product stays below
``2**42`` in the ring (2-party local truncation then fails with probability below ``2**-22`` per
element and product, see :mod:`crypten_lite.protocols.truncation`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crypten_lite.protocols.beaver import beaver, material_parts
from crypten_lite.protocols.comparison import sign_bits
from crypten_lite.protocols.conversion import inject_masked, open_masked_bits
from crypten_lite.protocols.fused import Operand, Pending, lazy, mul_fused, settle, settle_many
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.truncation import (
    resolve_method,
    truncate,
    truncate_local,
    truncation_request,
)
from crypten_lite.runtime.dealer import DealerRequest
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import logical_rshift

__all__ = [
    "Normalized",
    "evaluate",
    "fit",
    "internal_scale",
    "mul_many",
    "mul_many_lazy",
    "normalize",
    "public_affine",
    "public_affine_lazy",
    "rescale",
    "scale_by_buckets",
    "scale_by_buckets_lazy",
    "square_many",
    "square_many_lazy",
    "truncate_dealer_many",
    "truncate_many",
]

Tensor = torch.Tensor
EXTRA_BITS = 4
_SHIFT = 62  # dealer truncation: z + 2**62 is in [0, 2**63) for |z| < 2**62


def internal_scale(party: Party) -> int:
    """The working scale of the approximations: ``f + 4`` bits.

    Cost: none (a constant).

    Security and reference: not applicable (a public constant).
    """
    return party.frac_bits + EXTRA_BITS


def rescale(x: Tensor, party: Party, src: int, dst: int) -> Tensor:
    """A sharing at scale ``src`` brought to scale ``dst`` (left shift, or truncation).

    Cost: local for 2 parties; 1 dealer round with more (:func:`~crypten_lite.protocols.truncation.truncate`).
    Security: as the truncation.

    Reference: :mod:`crypten_lite.protocols.truncation`.
    """
    if dst >= src:
        return x << (dst - src)
    return truncate(x, party, src - dst)


def truncate_many(zs: list[Tensor], bits: list[int], party: Party) -> list[Tensor]:
    """Truncate each ``zs[i]`` by ``bits[i]``: local, or dealer pairs opened in one round."""
    if resolve_method(party) == "local":
        return [truncate_local(z, party, b) if b else z for z, b in zip(zs, bits, strict=True)]
    return truncate_dealer_many(zs, bits, party)


def truncate_dealer_many(
    zs: Sequence[Tensor], bits: Sequence[int], party: Party, *, tag: str = "approx.trunc"
) -> list[Tensor]:
    """:func:`~crypten_lite.protocols.truncation.truncate_dealer` of several sharings, each by
    its own amount, with every masked value opened in one round.

    Steps 1-4 of ``truncate_dealer`` per tensor: ``c = z + 2**62 + r`` opened (all tensors
    in one message), then ``c_hi - 2**(62-k) - [r_hi] + 2**(64-k) (1 - msb(c)) [r_msb]``.

    Error: ``floor(z / 2**k)`` or one more, for every ``|z| < 2**62`` (no failure event).
    Cost: 1 round; ``8`` bytes per element to each peer; one dealer request for all.
    Security: as ``truncate_dealer`` (``r`` uniform, so every opened ``c`` is uniform).
    Reference: as :func:`~crypten_lite.protocols.truncation.truncate_dealer` (Catrina and
    Saxena, FC'10; Mohassel and Rindal, ABY3, CCS'18).
    """
    out: list[Tensor | None] = [z if b == 0 else None for z, b in zip(zs, bits, strict=True)]
    todo = [i for i, b in enumerate(bits) if b != 0]
    if not todo:
        return list(zs)
    batch = party.dealer.request([truncation_request(tuple(zs[i].shape), bits[i]) for i in todo])
    parts = [material_parts(batch, j, 1) for j in range(len(todo))]
    masked = []
    for i, ((r,), _) in zip(todo, parts, strict=True):
        m = zs[i] + r
        if party.rank == 0:
            m += 1 << _SHIFT
        masked.append(m)
    opened = open_shares(masked, party, tag=tag)
    assert opened is not None
    for i, c_pub, (_, derived) in zip(todo, opened, parts, strict=True):
        k = bits[i]
        r_hi, r_msb = derived()
        weight = ((c_pub >> 63) + 1) << (64 - k)  # (1 - msb(c)) * 2**(64 - k)
        res = r_msb * weight - r_hi
        if party.rank == 0:
            res += logical_rshift(c_pub, k) - (1 << (_SHIFT - k))
        out[i] = res
    return [t for t in out if t is not None]


def _bits_list(bits: int | Sequence[int] | None, n: int, party: Party) -> list[int]:
    if bits is None:
        return [party.frac_bits] * n
    if isinstance(bits, int):
        return [bits] * n
    return list(bits)


def mul_many_lazy(
    pairs: Sequence[tuple[Operand, Operand]],
    party: Party,
    bits: int | Sequence[int] | None = None,
    *,
    tag: str = "approx.mul",
    settled: dict[int, Tensor] | None = None,
    extra: Sequence[Pending] = (),
) -> list[Operand]:
    """:func:`mul_many` whose truncations are left pending (:mod:`~crypten_lite.protocols.fused`):
    operands may be :class:`~crypten_lite.protocols.fused.Pending`, their truncation rides in
    this round, and each product comes back pending (truncated at once with the 2-party local
    method).

    Cost: 1 round (no truncation round: the next product or :func:`settle` pays it).
    Security and reference: as :func:`~crypten_lite.protocols.fused.mul_fused`.
    """
    if not pairs:
        return []
    bits_list = _bits_list(bits, len(pairs), party)
    zs = mul_fused(pairs, party, tag=tag, settled=settled, extra=extra)
    return [lazy(z, party, b) for z, b in zip(zs, bits_list, strict=True)]


def square_many_lazy(
    xs: Sequence[Operand],
    party: Party,
    bits: int | Sequence[int],
    *,
    tag: str = "approx.square",
    settled: dict[int, Tensor] | None = None,
    extra: Sequence[Pending] = (),
) -> list[Operand]:
    """:func:`square_many` with pending operands and results (see :func:`mul_many_lazy`).

    Cost: 1 round, ``8`` bytes per element to each peer.
    Security and reference: as :func:`~crypten_lite.protocols.fused.mul_fused`.
    """
    return mul_many_lazy([(x, x) for x in xs], party, bits, tag=tag, settled=settled, extra=extra)


def mul_many(
    pairs: Sequence[tuple[Operand, Operand]],
    party: Party,
    bits: int | Sequence[int] | None = None,
    *,
    tag: str = "approx.mul",
) -> list[Tensor]:
    """Products of several pairs in one Beaver round, each truncated by its ``bits``.

    Args:
        pairs: ``(x, y)`` shares (broadcasting within a pair); pending operands
            (:class:`~crypten_lite.protocols.fused.Pending`) are truncated in the same round.
        bits: truncation per product (default ``f``); 0 keeps the full product.

    Cost: 1 round, ``8 * (numel x + numel y)`` bytes per pair to each peer, plus one dealer
    truncation round per distinct ``bits`` with more than 2 parties.

    Security: semi-honest, as Beaver products and truncation.
    Reference: Beaver, CRYPTO'91; Mohassel and Zhang, SecureML, S&P'17.
    """
    if not pairs:
        return []
    if any(isinstance(v, Pending) for pair in pairs for v in pair):
        out = mul_many_lazy(pairs, party, bits, tag=tag)
        return settle_many(out, party, tag=tag + ".trunc")
    plain = [(x, y) for x, y in pairs if isinstance(x, Tensor) and isinstance(y, Tensor)]
    shapes = [torch.broadcast_shapes(x.shape, y.shape) for x, y in pairs]  # type: ignore[no-untyped-call]
    xs = torch.cat([x.expand(s).reshape(-1) for (x, _), s in zip(plain, shapes, strict=True)])
    ys = torch.cat([y.expand(s).reshape(-1) for (_, y), s in zip(plain, shapes, strict=True)])
    z = beaver("mul", xs, ys, party, tag=tag)
    chunks = z.split([math.prod(s) for s in shapes])  # type: ignore[no-untyped-call]
    parts = [p.view(s) for p, s in zip(chunks, shapes, strict=True)]
    return truncate_many(parts, _bits_list(bits, len(pairs), party), party)


def square_many(
    xs: Sequence[Operand], party: Party, bits: int | Sequence[int], *, tag: str = "approx.square"
) -> list[Tensor]:
    """Squares of several sharings in one round with square pairs ``[a], [a*a]``.

    ``[x*x] = [a*a] + e ([x] + [a])`` with the opened ``e = x - a``; then truncation.

    Cost: 1 round, ``8 * numel`` bytes per tensor to each peer.

    Security: semi-honest; ``a`` uniform, so ``e`` is uniform.
    Reference: Beaver, CRYPTO'91 (square pairs).
    """
    if any(isinstance(x, Pending) for x in xs):
        out = square_many_lazy(xs, party, bits, tag=tag)
        return settle_many(out, party, tag=tag + ".trunc")
    plain = [x for x in xs if isinstance(x, Tensor)]
    items = party.dealer.fetch([DealerRequest("square", {"shape": list(x.shape)}) for x in plain])
    opened = open_shares([x - a for x, (a, _) in zip(plain, items, strict=True)], party, tag=tag)
    assert opened is not None
    zs = [a2 + e * (x + a) for x, (a, a2), e in zip(plain, items, opened, strict=True)]
    bits_list = [bits] * len(xs) if isinstance(bits, int) else list(bits)
    return truncate_many(zs, bits_list, party)


def evaluate(
    t: Operand,
    polys: Sequence[Sequence[float]],
    party: Party,
    scale_in: int,
    scale_out: int,
    *,
    coeff_bits: int = 16,
) -> list[Tensor]:
    """Evaluate polynomials ``sum_k c_k t**k`` of one sharing ``t`` (at ``scale_in``) with
    Estrin's scheme, returning each at ``scale_out``.

    1. ``t**2`` (a square), then ``t**3, t**4`` (one round); degree <= 4 instead forms
       ``t**2 * (c2 + c3 t + c4 t**2)`` in the second round.
    2. Cubic blocks ``B_i = sum_{j<4} c_{4i+j} t**j`` are local (exact sums, one truncation).
    3. Pairs of blocks merge as ``B_2i + u B_2i+1`` with ``u = t**4``, then ``u**2``, ...: one
       round per level; blocks that are constants are scaled locally.

    All polynomials share the powers and every round is one opening. Rounds (2-party local
    truncation): 0 (degree <= 1), 1 (2), 2 (3..4), 3 (5..7 and 8), 4 (9..15). Products:
    degree 12 takes 7 (a power ladder takes 11). With exact truncation the truncations are
    fused into the next products (:func:`evaluate_lazy`): one more round for degree 2..4 (the
    settled ``t**2``); for degree 5 and above one more (``t**3`` and ``t**4`` settled for the
    blocks) and one per level where a constant block scales a pending ``u``, none with
    :func:`evaluate_lazy`'s ``t_bound`` (they stay pending); plus the final truncation here
    (none with :func:`evaluate_lazy`, whose results feed the next product).

    Cost: the rounds above; ``8`` bytes per element for the square and ``16`` per other product to
    each peer.
    Security: semi-honest, as Beaver products and truncation.
    Reference: Estrin, "Organization of computer systems", 1960; Paterson and Stockmeyer,
    SIAM J. Comput. 1973 (fewer non-scalar products).
    """
    outs = evaluate_lazy(t, polys, party, scale_in, scale_out, coeff_bits=coeff_bits)
    return settle_many(outs, party, tag="poly.trunc")


def evaluate_lazy(
    t: Operand,
    polys: Sequence[Sequence[float]],
    party: Party,
    scale_in: int,
    scale_out: int,
    *,
    coeff_bits: int = 16,
    t_bound: float | None = None,
) -> list[Operand]:
    """:func:`evaluate` with the results' truncations left pending (for a following product);
    ``t`` may be pending. Every truncation inside is either fused into the next product or, for
    values the blocks need as linear terms (``t**2``, ``t**3``, ``u``), settled; each pending
    value is a product or an exact linear combination below ``2**62`` whenever the
    non-lazy evaluation's values stay below it.

    ``t_bound``: a promise ``|t| <= t_bound`` (a mantissa mapped onto ``[-1, 1]``). When the
    coefficients then keep every pending term below ``2**61`` (checked here, in public),
    degree 5 and above also leave ``t**3`` and ``u`` pending (linear terms of the blocks):
    no settling round at all, the same rounds as the local truncation plus the final one.

    Cost, security and reference: as :func:`evaluate`.
    """
    s = scale_in
    deg = max(len(c) for c in polys) - 1
    if deg <= 1:
        tt = settle(t, party)
        return [_combine_lazy([tt], c, party, s, scale_out, coeff_bits) for c in polys]
    st: dict[int, Tensor] = {}
    (t2,) = square_many_lazy([t], party, s, tag="poly.square", settled=st)
    t_set = st[id(t)] if isinstance(t, Pending) else t
    if deg == 2:
        t2s = settle(t2, party)
        return [_combine_lazy([t_set, t2s], c, party, s, scale_out, coeff_bits) for c in polys]
    if deg <= 4:
        t2s = settle(t2, party)
        inner = [_combine_lazy([t_set, t2s], list(c[2:]), party, s, s, coeff_bits) for c in polys]
        prods = mul_many_lazy([(t2s, q) for q in inner], party, s, tag="poly.estrin")
        lows = [_combine_lazy([t_set], list(c[:2]), party, s, s, coeff_bits) for c in polys]
        return [
            _rescale_op(_add_op(lo, p), party, s, scale_out)
            for lo, p in zip(lows, prods, strict=True)
        ]
    # With |t| <= t_bound promised, pending t**3 and u enter the blocks linearly (their
    # pending z times a coefficient stays below 2**61): no round to settle them.
    fuse = t_bound is not None and _fits(polys, t_bound, 2 * s + coeff_bits)
    st = {}
    t3, t4 = mul_many_lazy([(t_set, t2), (t2, t2)], party, s, tag="poly.powers", settled=st)
    t2s = st[id(t2)] if isinstance(t2, Pending) else t2
    if not fuse:
        t3, t4 = settle_many([t3, t4], party, tag="poly.trunc")
    out_blocks: list[list[Operand | float]] = []
    for c in polys:
        blocks: list[Operand | float] = []
        for i in range(0, len(c), 4):
            chunk = list(c[i : i + 4])
            if all(v == 0 for v in chunk[1:]):
                blocks.append(chunk[0])  # a constant block: scaled locally later
            else:
                blocks.append(_block([t_set, t2s], t3, chunk, party, s, coeff_bits))
        out_blocks.append(blocks)
    u: Operand = t4
    while max(len(b) for b in out_blocks) > 1:
        if (
            isinstance(u, Pending)
            and not fuse
            and any(
                not isinstance(blocks[i], (Tensor, Pending))
                for blocks in out_blocks
                for i in range(1, len(blocks), 2)
            )
        ):
            u = settle(u, party, tag="poly.trunc")  # a constant block scales u linearly
        pairs: list[tuple[Operand, Operand]] = []
        need_square = max(len(b) for b in out_blocks) > 2
        for blocks in out_blocks:
            for i in range(1, len(blocks), 2):
                hi_b = blocks[i]
                if isinstance(hi_b, (Tensor, Pending)):
                    pairs.append((u, hi_b))
        if need_square:
            pairs.append((u, u))
        prods = mul_many_lazy(pairs, party, s, tag="poly.estrin")
        it = iter(prods)
        merged_all = []
        for blocks in out_blocks:
            merged: list[Operand | float] = []
            for i in range(0, len(blocks), 2):
                lo = blocks[i]
                if i + 1 == len(blocks):
                    merged.append(lo)
                    continue
                hi = blocks[i + 1]
                if isinstance(hi, (Tensor, Pending)):
                    part = next(it)
                else:
                    part = _scale_lazy(u, hi, party, s, coeff_bits)
                merged.append(_add_op(lo, part, party, s))
            merged_all.append(merged)
        if need_square:
            u = next(it)
        out_blocks = merged_all
    results: list[Operand] = []
    for (b,) in out_blocks:
        val = b if isinstance(b, (Tensor, Pending)) else _constant(b, t_set, party, s)
        results.append(_rescale_op(val, party, s, scale_out))
    return results


def _rescale_op(x: Operand, party: Party, src: int, dst: int) -> Operand:
    """:func:`rescale` of an operand, the truncation left pending."""
    if isinstance(x, Pending):
        if dst >= src:
            return Pending(x.share << (dst - src), x.bits)
        return Pending(x.share, x.bits + src - dst)
    if dst >= src:
        return x << (dst - src)
    return lazy(x, party, src - dst)


def _combine_lazy(
    basis: Sequence[Tensor],
    coeffs: Sequence[float],
    party: Party,
    scale_in: int,
    scale_out: int,
    coeff_bits: int,
) -> Operand:
    """``c_0 + sum_{k>=1} c_k basis[k-1]`` (basis at ``scale_in``), exact sum, one pending
    truncation."""
    acc_scale = scale_in + coeff_bits
    acc = torch.zeros_like(basis[0])
    for b, c in zip(basis, coeffs[1:], strict=False):
        w = round(c * (1 << coeff_bits))
        if w:
            acc += b * w
    if party.rank == 0 and coeffs:
        acc += round(coeffs[0] * (1 << acc_scale))
    return _rescale_op(acc, party, acc_scale, scale_out)


def _scale_lazy(u: Operand, c: float, party: Party, scale: int, coeff_bits: int) -> Operand:
    w = round(c * (1 << coeff_bits))
    uw = u.scaled(w) if isinstance(u, Pending) else u * w
    return _rescale_op(uw, party, scale + coeff_bits, scale)


def _fits(polys: Sequence[Sequence[float]], t_bound: float, z_scale: int) -> bool:
    """Whether ``sum |c_k| max(1, t_bound)**k`` at ``z_scale`` stays below ``2**61``: every
    pending block or scaled power of :func:`evaluate_lazy` then fits the ring with headroom."""
    b = max(1.0, t_bound)
    worst = max(sum(abs(c) * b**k for k, c in enumerate(p)) for p in polys)
    return worst * 2.0**z_scale < 2.0**61


def _block(
    basis: Sequence[Tensor],
    t3: Operand,
    chunk: Sequence[float],
    party: Party,
    scale: int,
    coeff_bits: int,
) -> Operand:
    """``c_0 + c_1 t + c_2 t**2 + c_3 t**3`` at ``scale`` with settled ``t, t**2`` and a
    possibly pending ``t**3`` (its term added to the exact sum before the one truncation)."""
    if isinstance(t3, Tensor):
        return _combine_lazy([*basis, t3], chunk, party, scale, scale, coeff_bits)
    acc_scale = scale + coeff_bits
    acc = torch.zeros_like(basis[0])
    for b, c in zip(basis, chunk[1:3], strict=False):
        w = round(c * (1 << coeff_bits))
        if w:
            acc += b * w
    if party.rank == 0:
        acc += round(chunk[0] * (1 << acc_scale))
    w3 = round(chunk[3] * (1 << coeff_bits)) if len(chunk) > 3 else 0
    if w3 == 0:
        return _rescale_op(acc, party, acc_scale, scale)
    return _rescale_op(t3.scaled(w3) + acc, party, acc_scale, scale)


def _constant(c: float, like: Tensor, party: Party, scale: int) -> Tensor:
    out = torch.zeros_like(like)
    if party.rank == 0:
        out += round(c * (1 << scale))
    return out


def _add_op(a: Operand | float, b: Operand, party: Party | None = None, scale: int = 0) -> Operand:
    """``a + b`` for operands (pending ones aligned) or a float constant ``a`` at ``scale``."""
    if not isinstance(a, (Tensor, Pending)):
        assert party is not None
        like = b.share if isinstance(b, Pending) else b
        a = _constant(a, like, party, scale)
    if isinstance(a, Pending):
        return a + b
    if isinstance(b, Pending):
        return b + a
    return a + b


def public_affine(
    x: Tensor, party: Party, scale_x: int, a: float, b: float, scale_out: int
) -> Tensor:
    """``[a * x + b]`` for public reals ``a, b``, from scale ``scale_x`` to ``scale_out``
    (:func:`public_affine_lazy`, its truncation done at once).

    Cost: local for 2 parties (one truncation).
    Security: public operands only.

    Reference: fixed-point scaling as in SecureML (Mohassel and Zhang, S&P'17).
    """
    return settle(public_affine_lazy(x, party, scale_x, a, b, scale_out), party)


def public_affine_lazy(
    x: Tensor, party: Party, scale_x: int, a: float, b: float, scale_out: int
) -> Operand:
    """``[a * x + b]`` for public reals ``a, b``, from scale ``scale_x`` to ``scale_out``.

    Exact shift when ``a`` is a power of two and no truncation is needed; otherwise one
    truncation of ``x * round(a * 2**g)`` with ``g = 20``.

    Cost: 0 rounds: the truncation is left pending for the next product
    (:mod:`~crypten_lite.protocols.fused`), or local with 2-party local truncation.
    Security: public operands only.

    Reference: fixed-point scaling as in SecureML (Mohassel and Zhang, S&P'17).
    """
    mant, expo = math.frexp(a)
    y: Operand
    if mant == 0.5:  # a = 2**(expo - 1)
        shift = expo - 1 + scale_out - scale_x
        y = x << shift if shift >= 0 else lazy(x, party, -shift)
    else:
        g = 20
        y = _rescale_op(x * round(a * (1 << g)), party, scale_x + g, scale_out)
    if party.rank == 0:
        like = y.share if isinstance(y, Pending) else y
        y = _add_op(y, torch.full_like(like, round(b * (1 << scale_out))))
    return y


@functools.cache
def fit(
    fn: Callable[[Tensor], Tensor], lo: float, hi: float, degree: int, relative: bool = False
) -> tuple[float, ...]:
    """Coefficients ``c_k`` of ``p(t) = sum c_k t**k`` approximating ``fn(x)`` for
    ``x = (lo + hi)/2 + (hi - lo)/2 * t``, ``t`` in ``[-1, 1]``.

    Least squares on 2000 Chebyshev nodes, reweighted towards the minimax error (relative
    error with ``relative``). Computed once per function and interval (float64).

    Deterministic: the coefficients are public constants that every party computes on its own,
    and parties that used different constants would each scale their own share differently —
    a silently wrong result. So nothing here depends on thread counts or on the order of a
    parallel reduction: the nodes come from ``math.cos``, the fit is a Householder QR in the
    Chebyshev basis whose every dot product is an exactly rounded ``math.fsum``, and the
    conversion to the monomial basis is plain float arithmetic. (``torch.linalg.lstsq``, used
    before, returned different coefficients to two party threads of one process.) Only
    ``fn``'s own values could differ between machines whose vectorised ``exp``/``erf`` differ
    in the last bit, which moves the coefficients by about ``1e-16`` relative: far below the
    fixed-point encoding of any coefficient.

    Cost: none (public computation, cached).
    Reference: Chebyshev-node least squares with Lawson reweighting towards minimax.

    Security: public coefficients only.
    """
    n = 2000
    t = np.array([math.cos(math.pi * (j + 0.5) / n) for j in range(n)], dtype=np.float64)
    xv = (lo + hi) / 2 + (hi - lo) / 2 * t
    y = fn(torch.from_numpy(xv.copy())).to(torch.float64).numpy()
    basis = [np.ones(n), t.copy()]
    for _ in range(2, degree + 1):
        basis.append(2 * t * basis[-1] - basis[-2])
    cheb = np.stack(basis[: degree + 1], axis=1)  # (n, degree + 1): T_k(t_i)
    base = 1 / np.abs(y) if relative else np.ones(n)
    w = base.copy()
    c = np.zeros(degree + 1)
    for _ in range(20):
        c = _weighted_lstsq(cheb, y, w)
        err = np.abs(cheb @ c - y) * base
        w = w * (1 + 3 * err / err.max())
    return tuple(float(v) for v in _chebyshev_to_monomial(c.tolist()))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """An exactly rounded dot product: the same on every machine and thread count."""
    return math.fsum((a * b).tolist())


def _weighted_lstsq(a: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``argmin_c || w * (a @ c - y) ||`` by Householder QR with exactly rounded dot products."""
    m = a * w[:, None]  # fresh arrays: reduced in place below
    r = y * w
    cols = m.shape[1]
    for k in range(cols):
        v = m[k:, k].copy()
        norm = math.sqrt(_dot(v, v))
        if norm == 0.0:
            continue
        v[0] += math.copysign(norm, v[0])
        vv = _dot(v, v)
        for j in range(k, cols):
            m[k:, j] -= (2 * _dot(v, m[k:, j]) / vv) * v
        r[k:] -= (2 * _dot(v, r[k:]) / vv) * v
    c = np.zeros(cols)
    for k in range(cols - 1, -1, -1):  # back substitution on the upper triangle
        acc = math.fsum([r[k]] + [-float(m[k, j] * c[j]) for j in range(k + 1, cols)])
        c[k] = acc / m[k, k] if m[k, k] != 0 else 0.0
    return c


def _chebyshev_to_monomial(c: list[float]) -> list[float]:
    """Monomial coefficients of ``sum c_k T_k(t)`` (``T_0 = 1, T_1 = t,
    T_k = 2 t T_{k-1} - T_{k-2}``), by the same recurrence on coefficient lists."""
    d = len(c) - 1
    prev, cur = [1.0], [0.0, 1.0]
    out = [0.0] * (d + 1)
    out[0] += c[0]
    if d >= 1:
        out[1] += c[1]
    for k in range(2, d + 1):
        nxt = [0.0] * (k + 1)
        for i, v in enumerate(cur):
            nxt[i + 1] += 2 * v
        for i, v in enumerate(prev):
            nxt[i] -= v
        prev, cur = cur, nxt
        for i, v in enumerate(cur):
            out[i] += c[k] * v
    return out


@dataclass(eq=False)
class Normalized:
    """``x = m * base`` per element, with the bucket of ``base`` one-hot.

    Attributes:
        mantissa: ``[m]`` at scale ``f``, in ``[1, ratio)`` inside the domain (1 in the
            ``nonpos`` and ``above`` buckets).
        onehot: arithmetic 0/1 shares ``(K + 2, ...)``: ``nonpos`` (``x <= 0``), buckets
            ``0 .. K-1``, ``above`` (``x >= top``; an all-zero row without ``top``).
        bases: the real lower bound of each bucket ``0 .. K-1`` (``x = m * base``).
    """

    mantissa: Tensor
    onehot: Tensor
    bases: list[float]


def normalize(
    x: Tensor, party: Party, *, bounds: Sequence[int], top: int | None = None
) -> Normalized:
    """Split a positive sharing into mantissa and bucket: ``x = m * base``, ``m`` in
    ``[1, bounds[i+1] / bounds[i])``, with one comparison depth.

    1. :func:`~crypten_lite.protocols.comparison.sign_bits` of ``x`` against ``1``,
       ``bounds[1:]`` and ``top`` (ring values): one opening of ``x + r`` serves all of them
       (3 rounds).
    2. Bucket bits are XORs of neighbouring sign bits (local); one injection round turns them
       into arithmetic one-hots and multiplies each by ``x`` (the opened ``x + r`` masks ``x``).
    3. ``m = sum_i (x * onehot_i) / bounds[i]``: exact shifts when every bound is a power of
       two, else a multiplication by ``round(2**38 / bounds[i])``; one truncation to scale ``f``.

    Args:
        bounds: increasing ring lower bounds of the buckets (bucket 0 also takes
            ``[1, bounds[0])``); bucket ``i`` ends at ``bounds[i+1]``, the last at ``top``.
        top: start of the ``above`` bucket (mantissa 1); ``None``: the last bucket is open (a
            domain promise: its mantissa grows past the ratio for larger inputs).

    Bounds beyond ``2**36`` (mantissas at ``2**40`` and more before the last step) take the
    dealer's exact truncation instead of the local one, whose failure probability would be
    ``2**(bits - 64)``; so the whole ring up to ``2**62`` is covered.

    Cost: 4 rounds (5 with 2 parties and bounds beyond ``2**36``: the exact truncation);
    each party sends ``8 + 5 T + T / 8`` bytes per element to each peer (``+8`` for the exact
    truncation) for ``T = len(bounds) + (top is not None)`` thresholds.
    Security: semi-honest; as :func:`~crypten_lite.protocols.comparison.sign_bits` (the opened
    ``x + r`` and bucket bits are masked by uniform dealer values).
    Reference: normalisation to a mantissa and a power of two as in Catrina and Dragulescu,
    "Secure division with fixed-point numbers", and Aly and Smart, ACNS'19.
    """
    f = party.frac_bits
    k = len(bounds)
    thresholds: list[int | Tensor] = [1, *bounds[1:], *([top] if top is not None else [])]
    sb = sign_bits(x, party, thresholds, mul=True, tag="normalize")
    b = sb.bits  # b[i] = [x < t_i]
    # nonpos, then bucket i = [t_i <= x < t_(i+1)]; without a top the last bucket is implicit
    rows = torch.cat([b[:1], b[:-1] ^ b[1:]])
    d_pub = open_masked_bits(rows, sb.rho, party, tag="normalize.b2a")
    onehot = inject_masked(d_pub, sb.rho_a, party)
    assert sb.r_rho is not None
    n_pad = sb.c_pub.numel()
    x_flat = F.pad(x.reshape(-1), (0, n_pad - x.numel()))
    x_rho = sb.c_pub * sb.rho_a - sb.r_rho
    x_on = d_pub * x_flat + (1 - 2 * d_pub) * x_rho  # [x * onehot_row]
    if top is None:  # the open last bucket: what the other rows leave over
        last = _one_minus(onehot.sum(0), party)
        onehot = torch.cat([onehot, last.unsqueeze(0)])
        x_on = torch.cat([x_on, (x_flat - x_on.sum(0)).unsqueeze(0)])
    per_bucket = x_on[1 : k + 1]
    exact = False
    if all(bd & (bd - 1) == 0 for bd in bounds):
        scale = max(bd.bit_length() - 1 for bd in bounds)
        shifts = torch.tensor([scale - (bd.bit_length() - 1) for bd in bounds]).unsqueeze(1)
        big = (per_bucket << shifts).sum(0)  # m * 2**scale, below 2**(scale + step)
        # the largest bucket ratio bounds the mantissa: m * 2**scale < 2**(scale + ratio)
        ends = [*bounds[1:], top if top is not None else 2 * bounds[-1]]
        ratio = max((e // b).bit_length() - 1 for b, e in zip(bounds, ends, strict=True))
        # beyond 2**40 a local truncation would fail too often: the dealer's is exact
        exact = scale + ratio > 40
        if scale + ratio > _SHIFT:
            raise ValueError(f"party {party.rank}: normalize mantissas must stay below 2**62")
    else:
        scale = 38
        weights = torch.tensor([round(2.0**scale / bd) for bd in bounds]).unsqueeze(1)
        big = (per_bucket * weights).sum(0)
    rows_sum = onehot[: k + 1].sum(0)
    above = _one_minus(rows_sum, party) if top is not None else torch.zeros_like(rows_sum)
    special = onehot[0] + above
    if exact:
        (m,) = truncate_dealer_many([big], [scale - f], party, tag="normalize.trunc")
    else:
        m = rescale(big, party, scale, f)
    m = m + (special << f)
    full = torch.cat([onehot[: k + 1], above.unsqueeze(0)])
    shape = x.shape
    return Normalized(
        mantissa=m[: sb.n].reshape(shape),
        onehot=full[:, : sb.n].reshape(k + 2, *shape),
        bases=[bd / 2.0**f for bd in bounds],
    )


def _one_minus(v: Tensor, party: Party) -> Tensor:
    out = -v
    if party.rank == 0:
        out += 1
    return out


def scale_by_buckets(
    v: Operand,
    onehot: Tensor,
    factors: Sequence[float],
    party: Party,
    scale_v: int,
    *,
    add: Sequence[float] | None = None,
) -> Tensor:
    """:func:`scale_by_buckets_lazy` with its truncation done (one more round with exact
    truncation).

    Cost: 1 round (2 with exact truncation), as :func:`scale_by_buckets_lazy`.
    Security: semi-honest, as Beaver products.
    Reference: Beaver, CRYPTO'91.
    """
    out = scale_by_buckets_lazy(v, onehot, factors, party, scale_v, add=add)
    return settle(out, party, tag="scale.trunc")


def scale_by_buckets_lazy(
    v: Operand,
    onehot: Tensor,
    factors: Sequence[float],
    party: Party,
    scale_v: int,
    *,
    add: Sequence[float] | None = None,
) -> Operand:
    """``v * sum_i onehot_i * factors_i (+ sum_i onehot_i * add_i)`` at scale ``f``, one round.

    When every nonzero factor is a power of two and ``v`` times the largest, with the smallest
    exact, stays below ``2**42`` (e.g. sqrt, inv_sqrt: factors ``2**-8 .. 2**10``), one product.
    Otherwise the factors are split into a part >= 1 (encoded at scale 0 when they are powers
    of two, else with as many fractional bits as keep the product below ``2**42``) and a part
    < 1 (encoded at scale 20), so neither product leaves ``2**42`` for results up to ``2**16``.

    Cost: 1 round, ``16`` bytes per element to each peer (one product), else ``32``.
    Security: semi-honest, as Beaver products.
    Reference: Beaver, CRYPTO'91.
    """
    f = party.frac_bits
    nonzero = [abs(fa) for fa in factors if fa != 0]
    if nonzero and all(math.frexp(a)[0] == 0.5 for a in nonzero):
        # powers of two only (sqrt, inv_sqrt): one product, the factors at ``bits`` fractional
        # bits, when v (below 4 at scale_v) times the largest stays below 2**42
        bits = max(0, -min(math.frexp(a)[1] - 1 for a in nonzero))
        top_bits = max(math.frexp(a)[1] - 1 for a in nonzero)
        if scale_v + 2 + top_bits + bits <= 42 and scale_v + bits >= f:
            w = torch.tensor([round(fa * (1 << bits)) for fa in factors], dtype=torch.int64)
            view1 = (-1,) + (1,) * (onehot.dim() - 1)
            (out,) = mul_many_lazy(
                [(v, (onehot * w.view(view1)).sum(0))], party, [scale_v + bits - f]
            )
            if add is not None:
                w_add = torch.tensor([round(a * (1 << f)) for a in add], dtype=torch.int64)
                out = _add_op(out, (onehot * w_add.view(view1)).sum(0))
            return out
    big = [fa if abs(fa) >= 1 else 0.0 for fa in factors]
    small = [fa if abs(fa) < 1 else 0.0 for fa in factors]
    exact = all(b == 0 or math.frexp(abs(b))[0] == 0.5 for b in big)
    # v (at scale_v, |v| < 4) times the factor stays below 2**42
    largest = max([abs(b) for b in big] + [1.0])
    sb_bits = 0 if exact else max(0, min(20, 40 - scale_v - math.ceil(math.log2(largest))))
    w_big = torch.tensor([round(b * (1 << sb_bits)) for b in big], dtype=torch.int64)
    w_small = torch.tensor([round(s * (1 << 20)) for s in small], dtype=torch.int64)
    view = (-1,) + (1,) * (onehot.dim() - 1)
    s_big = (onehot * w_big.view(view)).sum(0)
    s_small = (onehot * w_small.view(view)).sum(0)
    hi_part, lo_part = mul_many_lazy(
        [(v, s_big), (v, s_small)], party, [scale_v + sb_bits - f, scale_v + 20 - f]
    )
    out = _add_op(hi_part, lo_part)
    if add is not None:
        w_add = torch.tensor([round(a * (1 << f)) for a in add], dtype=torch.int64)
        out = _add_op(out, (onehot * w_add.view(view)).sum(0))
    return out
