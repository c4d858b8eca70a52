"""Layer L3: bounded activations (sigmoid, tanh, erf, GeLU, SiLU) and softmax / log-softmax.

The bounded functions share one shape (:func:`_bounded`): each is a polynomial of ``|x|`` on
``[0, T]`` glued to its saturation values outside, using the function's symmetry:

1. :func:`~crypten_lite.protocols.comparison.sign_bits` of ``x`` against ``-T``, ``0`` and
   ``T`` (one opening, 3 rounds): ``below = [x < -T]``, ``s = [x < 0]``, ``inside_hi =
   [x <= T]``.
2. One injection round makes the three bits arithmetic and forms ``x * s`` (the opened
   ``x + r`` masks ``x``), hence ``|x| = x - 2 x s`` and ``relu(x) = x - x s``.
3. ``q = p(|x|)``, a fitted polynomial of degree 12 in ``t = 2|x|/T - 1`` (4 rounds).
4. One product glues the pieces, e.g. ``sigmoid = q (pos - neg) + neg + above``. Outside
   ``[-T, T]`` the polynomial may be garbage, but it is multiplied by an exact 0.

So each costs 9 rounds (CrypTen's sigmoid: 23) and is exact in its saturation regions up to
the stated tail value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from crypten_lite.party import Party
from crypten_lite.protocols.comparison import clamp, public_threshold, sign_bits
from crypten_lite.protocols.conversion import inject_masked, open_masked_bits
from crypten_lite.protocols.fused import (
    Operand,
    Pending,
    lazy,
    settle,
    settle_many,
    settled_value,
)
from crypten_lite.protocols.polynomial import (
    Normalized,
    evaluate,
    evaluate_lazy,
    fit,
    internal_scale,
    mul_many,
    mul_many_lazy,
    normalize,
    public_affine,
    public_affine_lazy,
    rescale,
    square_many_lazy,
)
from crypten_lite.protocols.reduction import max_dim

__all__ = ["erf", "gelu", "log_softmax", "sigmoid", "silu", "softmax", "tanh"]

Tensor = torch.Tensor
_DEGREE = 12
_SOFTMAX_FLOOR = 24.0  # exp(-24) = 3.8e-11: softmax inputs below max - 24 contribute exactly 0


def _sigmoid64(t: Tensor) -> Tensor:
    return torch.sigmoid(t)


def _tanh64(t: Tensor) -> Tensor:
    return torch.tanh(t)


def _erf64(t: Tensor) -> Tensor:
    return torch.erf(t)


def _gelu_tail(a: Tensor) -> Tensor:
    """``a * Phi(-a)``: ``gelu(x) = relu(x) - h(|x|)``."""
    return a * 0.5 * torch.erfc(a / math.sqrt(2.0))


def _silu_tail(a: Tensor) -> Tensor:
    """``a * sigmoid(-a)``: ``silu(x) = relu(x) - h(|x|)``."""
    return a * torch.sigmoid(-a)


def _one_minus(v: Tensor, party: Party) -> Tensor:
    out = -v
    if party.rank == 0:
        out += 1
    return out


def _bounded(
    x: Tensor, party: Party, bound: float, fn: Callable[[Tensor], Tensor], kind: str
) -> Tensor:
    """See the module docstring. ``kind``: ``"half"`` (``f(-x) = 1 - f(x)``, saturating at 0
    and 1), ``"odd"`` (saturating at -1 and 1) or ``"relu"`` (``relu(x) - h(|x|)``)."""
    f = party.frac_bits
    scale = internal_scale(party)
    t_hi = public_threshold(bound, f, strict=False)  # [x <= T]
    t_lo = public_threshold(-bound, f, strict=True)  # [x < -T]
    sb = sign_bits(x, party, [t_lo, 0, t_hi], mul=True, tag="act")
    n_pad = sb.c_pub.numel()
    d_pub = open_masked_bits(sb.bits, sb.rho, party, tag="act.b2a")
    bits = inject_masked(d_pub, sb.rho_a, party)  # below, s, inside_hi
    assert sb.r_rho is not None
    x_flat = F.pad(x.reshape(-1), (0, n_pad - x.numel()))
    xs = d_pub[1] * x_flat + (1 - 2 * d_pub[1]) * (sb.c_pub * sb.rho_a[1] - sb.r_rho[1])
    a = x_flat - 2 * xs  # |x|
    below, neg_sign, le_hi = bits[0], bits[1], bits[2]
    # exact truncations stay pending into the next product (protocols/fused.py)
    t = public_affine_lazy(a, party, f, 2.0 / bound, -1.0, scale)
    coeffs = fit(fn, 0.0, float(bound), _DEGREE)
    (q,) = evaluate_lazy(t, [coeffs], party, scale, f)
    one = 1 << f
    if kind == "relu":
        inside = le_hi - below
        (hq,) = mul_many([(q, inside)], party, 0, tag="act.glue")
        out = x_flat - xs - hq
    else:
        pos = le_hi - neg_sign
        neg = neg_sign - below
        (qq,) = mul_many([(q, pos - neg)], party, 0, tag="act.glue")
        above = _one_minus(le_hi, party)
        out = qq + (above << f)
        if kind == "half":
            out = out + neg * one
        else:
            out = out - below * one
    return out[: x.numel()].reshape(x.shape)


def sigmoid(x: Tensor, party: Party) -> Tensor:
    """``[sigmoid(x)]`` (module docstring; ``T = 12``, ``sigmoid(-x) = 1 - sigmoid(x)``).

    Domain: all ``x``. Error: below ``1e-4`` absolute everywhere (measured ``7e-5`` on
    ``[-40, 40]``, 2 and 3 parties: fit error ``4.3e-5`` plus rounding); outside ``[-12, 12]``
    the saturated 0 or 1 errs at most ``sigmoid(-12) = 6.1e-6``. CrypTen: ``2.7e-3``.

    Cost (2 parties): 9 rounds; each party sends about ``8 + 15 + 3/8 + 20 * 8 = 185`` bytes
    per element to each peer. Exact truncation (the default): 10 rounds (19 unfused).
    Security: semi-honest; comparison and products as in their modules.
    Reference: piecewise polynomial activations as in SecureML (Mohassel and Zhang, S&P'17),
    here one polynomial of ``|x|`` with exact saturation by comparison.
    """
    return _bounded(x, party, 12.0, _sigmoid64, "half")


def tanh(x: Tensor, party: Party) -> Tensor:
    """``[tanh(x)]`` (``T = 6``, odd). Error below ``1e-4`` absolute everywhere (measured
    ``9.2e-5``); the saturated tails err at most ``1 - tanh(6) = 1.2e-5``. Cost as
    :func:`sigmoid` (9 rounds).

    Security: semi-honest, as :func:`sigmoid`.
    Reference: as :func:`sigmoid`.
    """
    return _bounded(x, party, 6.0, _tanh64, "odd")


def erf(x: Tensor, party: Party) -> Tensor:
    """``[erf(x)]`` (``T = 4``, odd). Error below ``4e-5`` absolute everywhere (measured
    ``3e-5``); tails err at most ``erfc(4) = 1.5e-8``. Cost as :func:`sigmoid` (9 rounds).

    Security: semi-honest, as :func:`sigmoid`.
    Reference: as :func:`sigmoid`.
    """
    return _bounded(x, party, 4.0, _erf64, "odd")


def gelu(x: Tensor, party: Party) -> Tensor:
    """``[x * Phi(x)]`` (exact GeLU, ``Phi`` the normal CDF) as ``relu(x) - h(|x|)`` with
    ``h(a) = a Phi(-a)`` fitted on ``[0, 6]``. Error below ``5e-5`` absolute everywhere
    (measured ``3.8e-5``; ``h(6) = 6e-9``). Cost as :func:`sigmoid` (9 rounds).

    Security: semi-honest, as :func:`sigmoid`.
    Reference: as :func:`sigmoid`.
    """
    return _bounded(x, party, 6.0, _gelu_tail, "relu")


def silu(x: Tensor, party: Party) -> Tensor:
    """``[x * sigmoid(x)]`` as ``relu(x) - h(|x|)`` with ``h(a) = a sigmoid(-a)`` fitted on
    ``[0, 12]``. Error below ``2.5e-4`` absolute everywhere (measured ``1.2e-4``; tail
    ``h(12) = 7.4e-5``). Cost as :func:`sigmoid` (9 rounds).

    Security: semi-honest, as :func:`sigmoid`.
    Reference: as :func:`sigmoid`.
    """
    return _bounded(x, party, 12.0, _silu_tail, "relu")


def _exp_shifted(x: Tensor, party: Party, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(z = x - max, exp(max(z, -24)), sum over dim)``, ``dim`` the last dimension.

    The floor -24 (not -16) makes clamped entries contribute exactly 0 to the sum: ``exp``
    at -16 still rounds to one ulp with probability ``0.008`` per element, which over 1000
    masked positions adds ``1e-4`` to the row sum; at -24 it never does (measured).
    """
    m, _ = max_dim(x, party, dim, keepdim=True)
    z = x - m
    e = _exp_floor(clamp(z, party, min=-_SOFTMAX_FLOOR), party)
    return z, e, e.sum(dim, keepdim=True)


def _exp64(t: Tensor) -> Tensor:
    return torch.exp(t)


_EXP_SQUARINGS = 3


def _exp_floor(z: Tensor, party: Party) -> Tensor:
    """``[exp(z)]`` for ``z`` in ``[-24, 0]`` (the clamped, max-subtracted logits), 6 rounds.

    1. ``t = z / 12 + 1`` in ``[-1, 1]`` (local), so ``y = z / 8 = 1.5 t - 1.5``.
    2. ``v = p(t) ~ exp(y)``, a degree-8 relative minimax fit on ``[-3, 0]`` (relative error
       ``3.9e-7``; Estrin, 3 rounds), coefficients with 20 bits, at scale ``S = f + 2``.
    3. Three squarings ``v <- v**2`` at scale ``S`` (3 rounds), then ``S -> f``.

    The generic :func:`~crypten_lite.protocols.elementary.exp` serves ``[-16, 8]`` with a
    degree-4 core on ``x / 64`` and six squarings at up to ``f + 6`` bits (8 rounds); the max
    subtraction bounds ``z`` to ``[-24, 0]``, where a wider core and three squarings suffice:
    2 rounds fewer. Every product here has ``|t|, |v| <= 1`` at ``S = 18`` bits, so it stays
    below ``2**36`` in the ring: 2-party local truncation fails with probability below
    ``8 * 2**-28 = 2**-25`` per element in all (the generic exp: about ``2**-19``, i.e. a few
    failures per BERT-base forward pass at sequence length 128, 2.4 million softmax inputs).

    Error: absolute below 8 ulps (measured 7.2 on a dense grid of ``[-24, 0]``, 2 and 3
    parties), relative below ``1.5e-4`` where ``exp(z) >= 0.5`` (measured ``1.3e-4``): the fit's
    ``3.9e-7`` and the rounding of ``v`` at ``S`` bits, both doubled by each squaring; exactly 0
    at ``z = -24`` (measured).
    """
    f = party.frac_bits
    scale = f + 2
    # Truncations ride in the next product's round (protocols/fused.py); the last squaring
    # truncates straight to scale f and is settled on its own (1 round with exact truncation).
    t = public_affine_lazy(z, party, f, 1 / 12, 1.0, scale)
    coeffs = fit(_exp64, -3.0, 0.0, 8, True)
    (v,) = evaluate_lazy(t, [coeffs], party, scale, scale, coeff_bits=20, t_bound=1.0)
    for j in range(_EXP_SQUARINGS):
        last = j == _EXP_SQUARINGS - 1
        (v,) = square_many_lazy([v], party, 2 * scale - f if last else scale, tag="softmax.exp")
    return settle(v, party, tag="softmax.exp")


def _recip(t: Tensor) -> Tensor:
    return 1 / t


def _ln(t: Tensor) -> Tensor:
    return torch.log(t)


# The row sum s of max-subtracted exponentials lies in [1, n] up to exp's relative error
# (1e-4): the mantissa m = s / 2**k of its power-of-two bucket lies in [1, 2] up to that error.
# The fits cover a little more on both sides.
_M_LO, _M_HI = 0.99, 2.02


def _sum_buckets(s: Tensor, party: Party, n: int) -> Normalized:
    """``s = m * 2**k`` with ``m`` in ``[1, 2)``: one comparison depth (4 rounds) against the
    thresholds ``2**1 .. 2**(K-1)`` (``K = ceil(log2 n)``), power-of-two bases, so the mantissa
    is exact shifts (:func:`~crypten_lite.protocols.polynomial.normalize`). The row sum is one
    element per row, so the ``K`` thresholds cost bytes per row, not per element."""
    f = party.frac_bits
    k = max(1, math.ceil(math.log2(max(n, 2))))
    return normalize(s, party, bounds=[1 << (f + i) for i in range(k)], top=None)


_COEFF_BITS = 16


def _combine_lazy(
    terms: list[tuple[Tensor, float]], const: float, party: Party, scale: int
) -> Operand:
    """``const + sum c * term`` (terms at ``scale``) at ``scale``: an exact integer sum at
    ``scale + cb`` whose one truncation by ``cb`` is left pending for the next product."""
    cb = _COEFF_BITS
    acc = torch.zeros_like(terms[0][0])
    for term, c in terms:
        acc += term * round(c * (1 << cb))
    if party.rank == 0:
        acc += round(const * (1 << (scale + cb)))
    return lazy(acc, party, cb)


def _normalised_quotient(e: Tensor, s: Tensor, party: Party, n: int, dim: int) -> Tensor:
    """``[e / s]`` for the row sums ``s`` in ``[1, n]`` (broadcast along ``dim``): 7 rounds with
    local truncation; with the exact default the truncations ride in the next products
    (:mod:`~crypten_lite.protocols.fused`) and two settles add 2 rounds.

    1. ``s = m * 2**k``, ``m`` in ``[1, 2)`` (:func:`_sum_buckets`, 4 rounds); ``F = 2**-k``
       from the one-hot at scale ``S = f + 4`` (exact public weights).
    2. ``1/m ~ p(t)``, ``p`` a degree-5 relative minimax fit on ``[0.99, 2.02]`` (relative
       error ``6e-5``), ``t`` the affine image of ``m`` in ``[-1, 1]``. Written as
       ``p = c0 + t Q`` with ``Q = c1 + c2 t + c3 t**2 + c4 t**3 + c5 t**4``, the product
       ``e F p(t)`` takes 3 rounds: ``(t**2; eF)``, then ``(t**3, t**4; eF t)``, then
       ``(eF t) Q``, plus ``c0 eF`` (local). Three products per element (``eF``, ``eF t``,
       ``eF t Q``), the powers of ``t`` once per row.

    No Newton step is needed: the fit alone is 3 times below the error budget, and the scale
    ``2**-k`` is exact, so the quotient's relative error is the fit's plus the rounding of
    the products at ``f + 4`` bits. Every per-element product is proportional to ``e / s``,
    so over a row the 2-party local truncations fail with probability about
    ``3 * 2**41 / 2**64 = 2**-21.4`` in all (:func:`_exp_floor`: ``2**-25`` per element).
    """
    f = party.frac_bits
    scale = internal_scale(party)
    norm = _sum_buckets(s, party, n)
    onehot = norm.onehot  # (K + 2, ...): nonpos, buckets 0..K-1, above (all zero)
    k = len(norm.bases)
    w = torch.tensor([0] + [round(2.0 ** (scale - i)) for i in range(k)] + [0])
    factor = (onehot * w.view((-1,) + (1,) * s.dim())).sum(0)  # 2**-k at scale S
    c = fit(_recip, _M_LO, _M_HI, 5, True)
    span = _M_HI - _M_LO
    t_p = public_affine_lazy(norm.mantissa, party, f, 2 / span, -(_M_HI + _M_LO) / span, scale)
    e_s = e << (scale - f)
    # Pending truncations ride in the next round (protocols/fused.py); ``st`` collects the
    # values each round settles, so an operand reused later is the same truncated value.
    st: dict[int, Tensor] = {}
    t2_p, ef_p = mul_many_lazy(
        [(t_p, t_p), (e_s, factor)], party, scale, tag="softmax.recip", settled=st
    )
    t = settled_value(t_p, st)
    t3_p, t4_p, eft_p = mul_many_lazy(
        [(t, t2_p), (t2_p, t2_p), (ef_p, t)], party, scale, tag="softmax.recip", settled=st
    )
    t2, ef = settled_value(t2_p, st), settled_value(ef_p, st)
    t3, t4 = settle_many([t3_p, t4_p], party, tag="softmax.recip")
    q = _combine_lazy([(t, c[2]), (t2, c[3]), (t3, c[4]), (t4, c[5])], c[1], party, scale)
    cb = _COEFF_BITS
    (high,) = mul_many_lazy([(eft_p, q)], party, scale, tag="softmax.recip")
    base = ef * round(c[0] * (1 << cb))  # c0 e F at scale S + cb
    drop = scale + cb - f
    if isinstance(high, Pending):
        # ``c0 e F + (e F t Q) 2**cb`` at scale S + cb, still pending by S bits: both
        # truncations (S, then S + cb - f) in one settle
        acc = high.scaled(1 << cb) + base
        return settle(Pending(acc.share, acc.bits + drop), party, tag="softmax.recip")
    return rescale(base + (high << cb), party, scale + cb, f)


def _constant(like: Tensor, value: float, party: Party) -> Tensor:
    out = torch.zeros_like(like)
    if party.rank == 0:
        out += round(value * (1 << party.frac_bits))
    return out


def softmax(x: Tensor, party: Party, dim: int = -1) -> Tensor:
    """``[softmax(x, dim)]`` with max subtraction.

    1. ``m = max(x, dim)`` (:func:`~crypten_lite.protocols.reduction.max_dim`: 5 rounds for
       ``n <= 10``, 5 more per tree level beyond).
    2. ``z = max(x - m, -24)`` (:func:`~crypten_lite.protocols.comparison.clamp`, 4 rounds)
       bounds the exponent.
    3. ``e = exp(z)`` by :func:`_exp_floor` on ``[-24, 0]`` (6 rounds), ``s = sum e``
       (local), in ``[1, n]``.
    4. ``e / s`` by :func:`_normalised_quotient` (7 rounds): ``s = m 2**k`` with a
       power-of-two bucket, a degree-5 polynomial for ``1/m`` on ``[1, 2]``, and the exact
       factor ``2**-k`` folded into the product with ``e``.

    Domain: any inputs whose pairwise differences fit the ring (``|x| < 2**(62 - f)``), any
    row length ``n`` (rows longer than ``2**21`` get outputs below one ulp). Masked positions
    (a public mask saturated to ``-2**(40 - f)``, see :mod:`crypten_lite.encoding`) get
    exactly 0. Error: below ``2e-4`` absolute per output for every spread and ``n`` up to
    1024 (measured ``6.5e-5`` on spreads up to ``2**45`` and ``7.5e-5`` on the 128x10
    benchmark, 2 and 3 parties: exp's relative ``1.3e-4`` and the fit's ``6e-5``); inputs more than 24 below the maximum get exactly 0 instead of at most
    ``3.8e-11``. CrypTen: ``3e-3``.

    Cost (2 parties): ``5 L + 17`` rounds for a tree of ``L`` max levels: 22 for ``n <= 10``,
    27 for ``n <= 100``, 32 for ``n <= 1000`` (main before: 25, 34, 39; CrypTen: 94); about
    ``235 / 230 / 215`` bytes per element to each peer for ``n = 10 / 64 / 128`` (main before:
    ``183 / 175 / 160``: the quotient costs three products per element instead of one, for 5
    rounds fewer). More parties: every truncation is a dealer round. A 0-dim input or
    ``n = 1`` returns 1 (public, no rounds).
    Security: semi-honest; as the protocols used.

    Reference: max subtraction as in CrypTen (Knott et al., NeurIPS'21), with the protocols
    named above; normalisation to a power-of-two mantissa as in Catrina and Dragulescu,
    "Secure division with fixed-point numbers".
    """
    if x.dim() == 0 or x.shape[dim % x.dim()] == 1:
        return _constant(x, 1.0, party)
    d = dim % x.dim()
    n = x.shape[d]
    _, e, s = _exp_shifted(x, party, d)
    return _normalised_quotient(e, s, party, n, d)


def log_softmax(x: Tensor, party: Party, dim: int = -1) -> Tensor:
    """``[log_softmax(x, dim)] = z - ln(sum exp(z))`` with ``z = x - max(x)``.

    Steps 1-3 of :func:`softmax`, then ``ln s = ln m + k ln 2`` with ``s = m 2**k``
    (:func:`_sum_buckets`, 4 rounds): ``ln m`` a degree-7 fit on ``[0.99, 2.02]`` (absolute
    error ``2.4e-7``, 3 rounds), ``k ln 2`` a public weight of the one-hot (local).

    Error: below ``2e-4`` absolute (exp's relative error, the fit, rounding). Masked positions
    keep their (saturated) difference to the maximum. Cost (2 parties): ``5 L + 17`` rounds
    as :func:`softmax` (22 for ``n <= 10``). A 0-dim input or ``n = 1`` returns 0.
    Security: semi-honest; as the protocols used.

    Reference: as :func:`softmax`.
    """
    if x.dim() == 0 or x.shape[dim % x.dim()] == 1:
        return torch.zeros_like(x)
    f = party.frac_bits
    scale = internal_scale(party)
    d = dim % x.dim()
    n = x.shape[d]
    z, _, s = _exp_shifted(x, party, d)
    norm = _sum_buckets(s, party, n)
    k = len(norm.bases)
    span = _M_HI - _M_LO
    t = public_affine(norm.mantissa, party, f, 2 / span, -(_M_HI + _M_LO) / span, scale)
    (ln_m,) = evaluate(t, [fit(_ln, _M_LO, _M_HI, 7)], party, scale, f)
    w = torch.tensor([0] + [round(i * math.log(2.0) * (1 << f)) for i in range(k)] + [0])
    offset = (norm.onehot * w.view((-1,) + (1,) * s.dim())).sum(0)
    return z - (ln_m + offset)
