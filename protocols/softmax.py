"""Layer L3: softmax and log-softmax over a dimension, in few rounds.

``softmax(x) = e / s`` with ``e = exp(x - max x)`` and ``s = sum e`` along the dimension:

1. **Row max** ``M`` (:func:`~crypten_lite.protocols.reduction.max_dim`), exact, so
   ``z = x - M <= 0`` with equality at the maximum and ``s`` lies in ``[1, n]``.
2. **exp by segments** (:func:`_exp_segments`, 6 rounds with the clamp included): one
   comparison of ``z`` against ``-4, -8, -12, -16`` (one opening serves all four) tells each
   element its segment ``j`` (``z + 4 j`` in ``[-4, 0]``) or ``below`` (``z < -16``); then
   ``exp(z) = e**(-4 j) p(t)`` with ``t = (z + 4 j) / 2 + 1`` in ``[-1, 1]`` and ``p`` a
   degree-7 fit. The segment weight ``g = e**(-4 j)`` (0 for ``below``) is a public weight of
   the injected one-hot, so ``g`` and ``g t`` are local, ``t**2`` comes from a square whose
   opening rides in the comparison's first round, and ``g p(t)`` takes two product rounds.
   Elements ``below`` get ``g = 0`` exactly: whatever the polynomial makes of a masked score,
   it is multiplied by an exact 0, so no clamp is needed and masks cost nothing.
3. **The quotient** (:func:`_quotient`, 7 rounds + 1 settle): ``s`` in ``[1, n]`` is split into
   ``m 2**-i``... by one comparison against the powers of two below ``n`` (per row: bytes per
   row, not per element), ``t = 2 m - 3`` and ``F = 2**-i`` come out of the injection exactly
   (shifts), and ``e F p(t)`` with ``p ~ 1/m`` (degree 5) takes three product rounds.

The exponentials stay pending (:mod:`~crypten_lite.protocols.fused`) into the quotient: the
row sum and its comparison use the untruncated values, so no truncation round is spent
before the final one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from crypten_lite.protocols.beaver import material_parts
from crypten_lite.protocols.comparison import cmp_request, public_threshold, sign_bits
from crypten_lite.protocols.conversion import inject_masked, open_masked_bits
from crypten_lite.protocols.fused import Operand, Pending, lazy, settle, settled_value
from crypten_lite.protocols.polynomial import (
    evaluate,
    fit,
    internal_scale,
    mul_many_lazy,
    normalize,
    public_affine,
)
from crypten_lite.protocols.reduction import max_dim
from crypten_lite.protocols.truncation import resolve_method, truncate
from crypten_lite.runtime.dealer import DealerRequest, padded
from crypten_lite.runtime.party import Party

__all__ = ["log_softmax", "softmax"]

Tensor = torch.Tensor

_WIDTH = 4  # segment width: t = (z + 4 j) / 2 + 1 is an exact shift of z
_SEGMENTS = 4  # thresholds -4 .. -16; below -16 exp is taken as 0 (e**-16 = 1.1e-7)
_EXTRA = 2  # the exponentials' working scale S = f + 2
_COEFF_BITS = 16
_WEIGHT_BITS = 6  # extra bits of the exp's segment weights (exact truncation)


# ------------------------------------------------------------------------ operand helpers
def _raw(v: Operand) -> tuple[Tensor, int]:
    """(share, pending bits) of an operand: its value is ``share / 2**bits`` at its scale."""
    return (v.share, v.bits) if isinstance(v, Pending) else (v, 0)


def _combine(
    terms: Sequence[tuple[Operand, float]], const: float, party: Party, scale: int
) -> Operand:
    """``const + sum c * term`` (terms at value scale ``scale``) at ``scale``, as an operand:
    coefficients with ``_COEFF_BITS`` bits, one truncation by them left pending."""
    cb = _COEFF_BITS
    pend: Pending | None = None
    plain: Tensor | None = None
    for term, c in terms:
        w = round(c * (1 << cb))
        if isinstance(term, Pending):
            p = term.scaled(w)
            pend = p if pend is None else pend + p
        else:
            plain = term * w if plain is None else plain + term * w
    like = pend.share if pend is not None else plain
    assert like is not None
    if plain is None:
        plain = torch.zeros_like(like)
    if party.rank == 0:
        plain = plain + round(const * (1 << (scale + cb)))
    if pend is None:
        return lazy(plain, party, cb)
    acc = pend + plain
    return Pending(acc.share, acc.bits + cb)


def _add(a: Operand, b: Operand) -> Operand:
    """Sum of two operands at one value scale."""
    if isinstance(a, Pending):
        return a + b
    if isinstance(b, Pending):
        return b + a
    return a + b


def _rescaled(v: Operand, party: Party, drop: int) -> Operand:
    """``v`` with ``drop`` fewer fractional bits (pending: the truncation grows)."""
    if isinstance(v, Pending):
        return Pending(v.share, v.bits + drop)
    return lazy(v, party, drop)


# ------------------------------------------------------------------------ exp by segments
@functools.cache
def _exp_coeffs() -> tuple[float, ...]:
    """``p(t) ~ exp(2 t - 2)`` on ``t`` in ``[-1, 1]`` (``z'`` in ``[-4, 0]``), degree 7,
    relative minimax: relative error ``4.5e-5``."""
    return fit(torch.exp, -float(_WIDTH), 0.0, 7, True)


def _exp_segments(z: Tensor, party: Party) -> Operand:
    """``[exp(z)]`` for ``z <= 0`` (exactly 0 below -16) at scale ``S = f + 2``, pending.

    1. One dealer batch: comparison material for 4 thresholds and a square ``[u], [u**2]``.
       :func:`~crypten_lite.protocols.msb.sign_bits` of ``z`` against ``-4 j`` (``j = 1..4``)
       opens ``z + r`` and, in the same message, ``u - [u]`` for ``u = z / 2 + 1``
       (3 rounds).
    2. One injection round turns the segment rows (``[-8, -4)`` ... ``[-16, -12)``, below)
       into arithmetic 0/1 ``seg_j`` and gives ``seg_j z`` by the opened ``z + r``; the top
       segment is what the others leave (local).
    3. Local: ``k = sum j seg_j``; ``t = u + 2 k`` (exact shifts);
       ``t**2 = u**2 + 4 k u + 4 k**2`` with ``k u = sum j seg_j u``, ``k**2 = sum j**2 seg_j``;
       ``g = sum e**(-4 j) seg_j``, ``g t`` and ``c0 g + c1 g t`` as public weights of
       ``seg_j`` and ``seg_j z``.
    4. Round 1: ``t**4``, ``g t**2``, ``g t**3 = (g t) t**2``. Round 2:
       ``(g t**2)(c2 + c3 t)`` and ``(c4 g + c5 g t + c6 g t**2 + c7 g t**3) t**4``; their sum
       with step 3's ``c0 g + c1 g t`` is ``g p(t)``.

    Elements below -16 have ``g = 0`` exactly, so every term is an exact 0 however large
    ``z`` is (the products are exact in the ring; an exact 0 truncates to 0). No clamp.

    Why four segments and a floor of -16: each threshold costs about as much computation as a
    whole comparison (a wider segment needs a polynomial of higher degree, one more round),
    and ``e**-16 = 1.1e-7`` dropped per element moves a softmax probability by at most
    ``n e**-16`` (``1.1e-4`` at ``n = 1024``, within the documented error).

    Error: relative ``4.5e-5`` (the fit) plus a few ulps at ``S = f + 2`` and the segment
    weights' rounding at ``S + W`` bits (``W = 6``; with 2-party local truncation ``W = 0``, so
    up to ``1.2e-6`` absolute per element); exactly 0 below -16.
    Cost: 6 rounds (2 parties; the two product rounds leave their truncations pending); each
    party sends ``8 + 8 + 4 * 5 + 4 / 8`` bytes per element in steps 1-2 and 56 in step 4.
    Security: semi-honest; as sign_bits, bit injection and the fused products.
    Reference: segment-wise polynomial exp after a comparison, as in piecewise approximations
    (SecureML, S&P'17; PUMA, 2023); the exp's range ``[-R, 0]`` after max subtraction as in
    CrypTen (Knott et al., NeurIPS'21).
    """
    f = party.frac_bits
    S = f + _EXTRA
    n = z.numel()
    n_pad = padded(max(n, 1))
    flat = F.pad(z.reshape(-1), (0, n_pad - n))
    thresholds = [
        public_threshold(-float(_WIDTH * j), f, strict=True) for j in range(1, _SEGMENTS + 1)
    ]
    u = flat << (S - f - 1)  # u = z / 2 + 1 at scale S
    if party.rank == 0:
        u = u + (1 << S)
    square = DealerRequest("fused", {"operands": [[n_pad, 0]], "products": [[0, 0]]})
    batch = party.dealer.request([cmp_request(n_pad, _SEGMENTS, mul=True), square])
    (u_mask,), derived = material_parts(batch, 1, 1)
    sb = sign_bits(
        flat, party, thresholds, mul=True, extra=[u - u_mask], tag="softmax.seg", batch=batch
    )
    u_pub = sb.extra_pub[0]
    (u_mask2,) = derived()
    u2 = 2 * u_pub * u_mask + u_mask2  # [u**2] at scale 2S
    if party.rank == 0:
        u2 += u_pub * u_pub
    b = sb.bits  # b[j - 1] = [z < -4 j]
    rows = torch.cat([b[:-1] ^ b[1:], b[-1:]])  # segments 1..5, below
    d_pub = open_masked_bits(rows, sb.rho, party, tag="softmax.seg.b2a")
    seg_rows = inject_masked(d_pub, sb.rho_a, party)
    assert sb.r_rho is not None
    z_rows = d_pub * flat + (1 - 2 * d_pub) * (sb.c_pub * sb.rho_a - sb.r_rho)  # [seg z]
    one = torch.ones_like(flat) if party.rank == 0 else torch.zeros_like(flat)
    seg = [one - seg_rows.sum(0), *seg_rows[:-1]]  # segments 0..5 (below excluded)
    segz = [flat - z_rows.sum(0), *z_rows[:-1]]
    k = sum(j * seg[j] for j in range(1, _SEGMENTS))
    k2 = sum(j * j * seg[j] for j in range(1, _SEGMENTS))
    kz = sum(j * segz[j] for j in range(1, _SEGMENTS))
    assert isinstance(k, Tensor) and isinstance(k2, Tensor) and isinstance(kz, Tensor)
    t = u + (k << (S + 1))  # t = u + 2 k at scale S
    # t**2 = u**2 + 4 k u + 4 k**2, k u = sum j seg_j (2 z_S + 2**S) = 2 kz + k 2**S
    t2 = u2 + (((kz << 1) + (k << S)) << (S + 2)) + (k2 << (2 * S + 2))
    c = _exp_coeffs()
    # The segment weights e**(-4 j) carry W more bits than S: at S alone e**-12 rounds to
    # 2 ulps (24 % off), n such terms moving s by n 1.5e-6. Exact truncation has no magnitude
    # limit below 2**62; 2-party local truncation keeps W = 0 (its failure probability grows
    # with the products' magnitude, 2**(36 + W - 63) per element).
    w_bits = 0 if resolve_method(party) == "local" else _WEIGHT_BITS
    sw = S + w_bits

    def lin(c0: float, c1: float) -> Tensor:
        """``c0 g + c1 g t`` at scale ``2S + W``: public weights of ``seg_j`` and ``seg_j z``."""
        acc = torch.zeros_like(flat)
        for j in range(_SEGMENTS):
            w = math.exp(-_WIDTH * j)
            w1 = round(c1 * w * (1 << sw))
            # g t = w (z / 2 + 2 j + 1) on segment j; z / 2 at scale S is 2 z_f
            acc += seg[j] * (round(c0 * w * (1 << (S + sw))) + w1 * ((2 * j + 1) << S))
            acc += segz[j] * (2 * w1)
        return acc

    g = sum(round(math.exp(-_WIDTH * j) * (1 << sw)) * seg[j] for j in range(_SEGMENTS))
    assert isinstance(g, Tensor)  # at scale S + W
    t2_op = lazy(t2, party, S)
    gt_op = lazy(lin(0.0, 1.0), party, sw)
    t4, gt2, gt3 = mul_many_lazy(
        [(t2_op, t2_op), (g, t2_op), (gt_op, t2_op)], party, [S, sw, S], tag="softmax.exp"
    )
    low = _combine([(t, c[3])], c[2], party, S)  # c2 + c3 t
    high = _combine(
        [(lazy(lin(c[4], c[5]), party, sw), 1.0), (gt2, c[6]), (gt3, c[7])], 0.0, party, S
    )
    p1, p2 = mul_many_lazy([(gt2, low), (high, t4)], party, S, tag="softmax.exp")
    e = _add(_add(lazy(lin(c[0], c[1]), party, sw), p1), p2)
    if isinstance(e, Pending):
        return Pending(e.share[:n].reshape(z.shape), e.bits)
    return e[:n].reshape(z.shape)


# ------------------------------------------------------------------------ quotient
@functools.cache
def _recip_coeffs() -> tuple[float, ...]:
    """``p(t) ~ 1 / m`` for ``t = 2 m - 3``, degree 5, fitted for ``m`` in ``[0.999, 2.002]``
    (the row sum's mantissa up to the exponentials' error): relative error ``5.2e-5``."""
    lo, hi = 0.999, 2.002
    q = fit(torch.reciprocal, lo, hi, 5, True)  # in t' = (m - mid) / h
    mid, h = (lo + hi) / 2, (hi - lo) / 2
    # t' = alpha t + beta for m = (t + 3) / 2
    alpha, beta = 1 / (2 * h), (1.5 - mid) / h
    out = [0.0] * len(q)
    for i, qi in enumerate(q):  # qi (alpha t + beta)**i, expanded
        for r in range(i + 1):
            out[r] += qi * math.comb(i, r) * alpha**r * beta ** (i - r)
    return tuple(out)


def _quotient(e: Operand, party: Party, n: int, dim: int) -> Tensor:
    """``[e / s]`` at scale ``f`` for ``e`` at scale ``S`` (pending or not), ``s = sum e``
    along ``dim`` in ``[1, n]`` (up to the exponentials' error).

    1. ``K = ceil(log2 n)``. ``sign_bits`` of the (untruncated) row sum against
       ``2, 4, ..., 2**(K-1)`` (one opening per row, 3 rounds); one injection round gives the
       bucket one-hot ``b_i`` (``s`` in ``[2**i, 2**(i+1))``) and ``b_i s`` by the opened
       ``s + r``. Then ``m = sum b_i s 2**-i`` in ``[1, 2]`` and ``F = sum b_i 2**-i`` are
       exact shifts, ``t = 2 m - 3`` in ``[-1, 1]``. For ``n = 2`` nothing is compared.
    2. ``e F p(t)`` with ``p = c0 + ... + c5 t**5 ~ 1/m`` as
       ``eF (c0 + c1 t + c2 t**2) + (eF (c3 + c4 t + c5 t**2)) t**3``: round 1 ``t**2``,
       ``eF``; round 2 ``t**3`` and the two products with ``eF``; round 3 the product with
       ``t**3``. Every operand's truncation rides in the next round; one settle at the end.

    Error: relative ``5.2e-5`` (the fit) plus rounding at ``S`` bits. Cost: 7 rounds + 1
    settle (exact truncation; none with 2-party local truncation); ``K - 1`` thresholds per
    row, and 64 bytes per element in the product rounds.
    Security: as sign_bits, bit injection and the fused products.
    Reference: normalisation to a power-of-two mantissa as in Catrina and Dragulescu,
    "Secure division with fixed-point numbers"; polynomial reciprocal on ``[1, 2]``.
    """
    f = party.frac_bits
    S = f + _EXTRA
    share, bits = _raw(e)
    tot = S + bits  # the scale of ``share``
    s = share.sum(dim, keepdim=True)
    k = max(1, math.ceil(math.log2(max(n, 2))))
    fac: Tensor | None = None
    if k == 1:
        m_raw, m_scale = s, tot
    else:
        thresholds: list[int | Tensor] = [1 << (tot + i) for i in range(1, k)]
        sb = sign_bits(s, party, thresholds, mul=True, tag="softmax.sum")
        b = sb.bits  # b[i - 1] = [s < 2**i]
        rows = torch.cat([b[:1], b[:-1] ^ b[1:]])  # buckets 0 .. K-2 (K-1 implicit)
        d_pub = open_masked_bits(rows, sb.rho, party, tag="softmax.sum.b2a")
        onehot = inject_masked(d_pub, sb.rho_a, party)
        assert sb.r_rho is not None
        r_n = s.numel()
        s_flat = F.pad(s.reshape(-1), (0, sb.c_pub.numel() - r_n))
        s_on = d_pub * s_flat + (1 - 2 * d_pub) * (sb.c_pub * sb.rho_a - sb.r_rho)
        shifts = torch.arange(k - 1, 0, -1).unsqueeze(1)  # bucket i: 2**(K-1-i)
        m_flat = (s_on << shifts).sum(0) + (s_flat - s_on.sum(0))
        one = 1 if party.rank == 0 else 0
        fac_flat = (onehot << shifts).sum(0) + (one - onehot.sum(0))
        m_raw = m_flat[:r_n].reshape(s.shape)
        fac = fac_flat[:r_n].reshape(s.shape)  # 2**-i at scale K-1
        m_scale = tot + k - 1
    t_raw = m_raw << 1
    if party.rank == 0:
        t_raw = t_raw - (3 << m_scale)
    t = lazy(t_raw, party, m_scale - S)  # t = 2 m - 3 at scale S
    c = _recip_coeffs()
    pairs: list[tuple[Operand, Operand]] = [(t, t)]
    if fac is not None:
        pairs.append((e, fac))  # e F at scale S + K - 1
    st: dict[int, Tensor] = {}
    got = mul_many_lazy(pairs, party, [S, k - 1][: len(pairs)], tag="softmax.recip", settled=st)
    t2 = got[0]
    ef = got[1] if fac is not None else e
    t = settled_value(t, st)  # truncated in round 1: small coefficients' products stay small
    # rows: t, t2; elements: e F. Round 2: t**3, eF (c0 + c1 t + c2 t**2), eF (c3 + c4 t + c5 t**2)
    a0 = _combine([(t, c[1]), (t2, c[2])], c[0], party, S)
    a1 = _combine([(t, c[4]), (t2, c[5])], c[3], party, S)
    t3, p0, q = mul_many_lazy([(t, t2), (ef, a0), (ef, a1)], party, S, tag="softmax.recip")
    (p1,) = mul_many_lazy([(q, t3)], party, S, tag="softmax.recip")
    return settle(_rescaled(_add(p0, p1), party, S - f), party, tag="softmax.recip")


# ------------------------------------------------------------------------ entry points
def _constant(like: Tensor, value: float, party: Party) -> Tensor:
    out = torch.zeros_like(like)
    if party.rank == 0:
        out += round(value * (1 << party.frac_bits))
    return out


def softmax(x: Tensor, party: Party, dim: int = -1) -> Tensor:
    """``[softmax(x, dim)]`` (module docstring).

    1. ``M = max(x, dim)`` (:func:`~crypten_lite.protocols.reduction.max_dim`: 5 rounds for
       ``n <= 10``, 9 for ``n <= 20``, 10 for ``n <= 100``, 14 for ``n <= 200``).
    2. ``e = exp(x - M)`` by segments (:func:`_exp_segments`, 6 rounds, masks included).
    3. ``e / s`` (:func:`_quotient`, 7 rounds + 1 settle; 3 + 1 for ``n = 2``).

    Domain: any inputs whose pairwise differences fit the ring (``|x| < 2**(62 - f)``), any
    row length ``n`` up to ``2**18``. Masked positions (a public mask saturated to
    ``-2**(40 - f)``, see :mod:`crypten_lite.runtime.encoding`, the workloads' ``-64``, or any score
    more than 16 below the row's maximum) get exactly 0. Error: below ``2e-4`` absolute per
    output for every spread and ``n <= 1024`` (measured ``8e-5``, 2 and 3 parties, spreads up
    to ``2**45``, ``8.3e-5`` for 1023 scores just below any segment boundary: exp's relative
    ``4.5e-5``, the reciprocal's ``5.2e-5``, rounding at ``f + 2`` bits; the scores dropped
    below -16 add at most ``n e**-16``). With the opt-in 2-party local truncation the exp's
    segment weights keep ``f + 2`` bits (larger products would raise its failure probability):
    up to ``n 1.2e-6`` more (``1.2e-3`` measured at ``n = 1024``, ``1.5e-4`` at ``n = 128``).

    Cost (2 parties, exact truncation): ``L + 14`` rounds for a row max of ``L`` rounds: 19
    for ``n <= 10``, 24 for ``n <= 100``, 28 for ``n = 128`` (before: 26, 31, 36; CrypTen:
    94); with 2-party local truncation one fewer. A 0-dim input or ``n = 1`` returns 1
    (public, no rounds).
    Security: semi-honest; as the protocols used.

    Reference: max subtraction as in CrypTen (Knott et al., NeurIPS'21); the protocols named
    above.
    """
    if x.dim() == 0 or x.shape[dim % x.dim()] == 1:
        return _constant(x, 1.0, party)
    if party.frac_bits > _MAX_FRAC_BITS:
        return _at_lower_precision(softmax, x, party, dim)
    d = dim % x.dim()
    n = x.shape[d]
    m, _ = max_dim(x, party, d, keepdim=True)
    e = _exp_segments(x - m, party)
    return _quotient(e, party, n, d)


# The exp's segment products and the quotient's fits are laid out for ``f <= 16``: with their
# coefficient and weight bits, a larger ``f`` pushes the products past the ring's 2**62
# headroom (measured: softmax off by 6e-2 at f = 20). Above it the whole computation runs at
# f = 16 instead (below).
_MAX_FRAC_BITS = 16


def _at_lower_precision(fn: Callable[..., Tensor], x: Tensor, party: Party, dim: int) -> Tensor:
    """``fn`` at ``f = 16`` for a session with more fractional bits: the input truncated
    exactly to 16 bits (one round), the result shifted back up (exact, local). The error is
    the ``f = 16`` one (softmax's outputs lie in ``[0, 1]``, so 16 bits carry their documented
    accuracy; logits lose only bits below ``2**-16``, which move a probability by less than
    ``2**-16``)."""
    drop = party.frac_bits - _MAX_FRAC_BITS
    low = dataclasses.replace(party, config=party.config.replace(frac_bits=_MAX_FRAC_BITS))
    y = fn(truncate(x, party, drop), low, dim)
    return y << drop


_M_LO, _M_HI = 0.99, 2.02


def log_softmax(x: Tensor, party: Party, dim: int = -1) -> Tensor:
    """``[log_softmax(x, dim)] = z - ln(sum exp(z))`` with ``z = x - max(x)``.

    Steps 1-2 of :func:`softmax`, the row sum settled to scale ``f`` (1 round), then
    ``ln s = ln m + k ln 2`` with ``s = m 2**k``
    (:func:`~crypten_lite.protocols.polynomial.normalize`, 4 rounds): ``ln m`` a degree-7 fit
    on ``[0.99, 2.02]`` (absolute error ``2.4e-7``, 3 rounds), ``k ln 2`` a public weight of
    the one-hot (local).

    Error: below ``2e-4`` absolute (measured ``1.2e-4`` at spreads up to ``2**45``, 2 and 3
    parties). Masked positions keep their (saturated) difference to the maximum. Cost (2
    parties): ``L + 13`` rounds for a row max of ``L`` rounds (``L + 18`` with the exact
    default: 23 for ``n <= 10``). A 0-dim input or ``n = 1`` returns 0.
    Security: semi-honest; as the protocols used.

    Reference: as :func:`softmax`.
    """
    if x.dim() == 0 or x.shape[dim % x.dim()] == 1:
        return torch.zeros_like(x)
    if party.frac_bits > _MAX_FRAC_BITS:
        return _at_lower_precision(log_softmax, x, party, dim)
    f = party.frac_bits
    scale = internal_scale(party)
    d = dim % x.dim()
    n = x.shape[d]
    m, _ = max_dim(x, party, d, keepdim=True)
    z = x - m
    e = _exp_segments(z, party)
    share, bits = _raw(e)
    s_op: Operand = (
        Pending(share.sum(d, keepdim=True), bits) if bits else share.sum(d, keepdim=True)
    )
    s = settle(_rescaled(s_op, party, _EXTRA), party, tag="softmax.sum")
    k = max(1, math.ceil(math.log2(max(n, 2))))
    norm = normalize(s, party, bounds=[1 << (f + i) for i in range(k)], top=None)
    kk = len(norm.bases)
    span = _M_HI - _M_LO
    t = public_affine(norm.mantissa, party, f, 2 / span, -(_M_HI + _M_LO) / span, scale)
    (ln_m,) = evaluate(t, [fit(torch.log, _M_LO, _M_HI, 7)], party, scale, f)
    w = torch.tensor([0] + [round(i * math.log(2.0) * (1 << f)) for i in range(kk)] + [0])
    offset = (norm.onehot * w.view((-1,) + (1,) * s.dim())).sum(0)
    return z - (ln_m + offset)
