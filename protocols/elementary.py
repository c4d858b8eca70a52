"""Layer L3: elementary functions of fixed-point sharings — exp, log, reciprocal, division,
square root, inverse square root, powers, norms, sine and cosine.

Round counts are for 2 parties with the opt-in local truncation (no rounds of its own). With
the exact dealer truncation (the default, any number of parties) each truncation's opening
rides in the next product's round (:mod:`~crypten_lite.protocols.fused`), so a function costs
1-3 rounds more, not one per product layer (each function states both). "ulp" is ``2**-f``. The error bounds
quoted were measured against float64 on dense grids of the stated domains (2 and 3 parties,
tests in ``tests/mpc/test_approx*.py``); they include the fixed-point rounding of the result.

Two techniques carry most functions:

* **Range reduction by squaring** (exp): ``exp(x) = exp(x / 64)**64``, the inner value from a
  degree-4 polynomial computed at ``f + 6`` fractional bits, each squaring dropping one bit of
  scale, so no step loses more than one final ulp.
* **Normalisation** (reciprocal, div, sqrt, inv_sqrt, log, pow): one comparison depth against
  the thresholds ``16**i`` (``4**i`` for log, ``2**i`` for pow) writes ``x = m * 2**e`` with
  ``m`` in ``[1, 16)`` (:func:`~crypten_lite.protocols.polynomial.normalize`, 4 rounds; 5
  with 2 parties for the whole ring up to ``2**60``: the high buckets' mantissas need the
  dealer's exact truncation); a polynomial in ``m``,
  refined by Newton steps where needed, then a public per-bucket factor ``2**(-e)``,
  ``2**(e/2)``, ... applied in one product. CrypTen instead starts Newton's method from an
  exp-based guess (reciprocal: 38 rounds).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from crypten_lite.protocols.comparison import abs_and_sign
from crypten_lite.protocols.fused import Operand, Pending, lazy, settle, settle_many
from crypten_lite.protocols.polynomial import (
    evaluate_lazy,
    fit,
    internal_scale,
    mul_many,
    mul_many_lazy,
    normalize,
    public_affine,
    public_affine_lazy,
    scale_by_buckets,
    scale_by_buckets_lazy,
    square_many,
    square_many_lazy,
    truncate_dealer_many,
    truncate_many,
)
from crypten_lite.protocols.reduction import max_dim
from crypten_lite.runtime.party import Party

__all__ = [
    "cos",
    "div",
    "exp",
    "exp_lazy",
    "inv_sqrt",
    "log",
    "norm",
    "pow",
    "reciprocal",
    "reciprocal_lazy",
    "sin",
    "sqrt",
]

Tensor = torch.Tensor
_HI = 60  # normalisation covers ring values below 2**60: reals below 2**(60 - f) = 2**44
_EXP_SQUARINGS = 6


def _exp64(t: Tensor) -> Tensor:
    return torch.exp(t)


def _recip(t: Tensor) -> Tensor:
    return 1 / t


def _rsqrt(t: Tensor) -> Tensor:
    return t**-0.5


def _sqrt(t: Tensor) -> Tensor:
    return torch.sqrt(t)


def _log(t: Tensor) -> Tensor:
    return torch.log(t)


def _sin(t: Tensor) -> Tensor:
    return torch.sin(t)


def _cos(t: Tensor) -> Tensor:
    return torch.cos(t)


def _buckets(
    party: Party, lo: float | None, hi: float | None, step: int, top: int = _HI
) -> tuple[list[int], int | None]:
    """Ring lower bounds of the normalisation buckets, and the start of the ``above`` bucket.

    Without a hint: buckets ``[2**(step*i), 2**(step*(i+1)))`` up to ``2**top`` (reals up to
    ``2**(top - f)``), then ``above``. With a hint ``[lo, hi]`` (a promise): buckets start at
    ``lo`` and grow by ``2**step`` until they cover ``hi``; no ``above`` threshold when ``hi``
    is given. Bounds beyond ``2**22`` ring units fall back to powers of two (exact shifts).
    """
    f = party.frac_bits
    ratio = float(1 << step)
    if lo is None and hi is None:
        k = top // step
        return [1 << (step * i) for i in range(k)], 1 << (step * k)
    lo_ring = max(1.0, (lo if lo is not None and lo > 0 else 0.0) * 2.0**f)
    hi_ring = min(2.0**top, hi * 2.0**f) if hi is not None and hi > 0 else 2.0**top
    hi_ring = max(hi_ring, lo_ring * 1.0000001)
    k = max(1, math.ceil(math.log(hi_ring / lo_ring, ratio) - 1e-9))
    if lo_ring * ratio ** (k - 1) > 2.0**22:
        lo_bits = math.floor(math.log2(lo_ring))
        k = max(1, math.ceil((math.log2(hi_ring) - lo_bits) / step - 1e-9))
        bounds = [1 << (lo_bits + step * i) for i in range(k)]
    else:
        bounds = [max(1, math.ceil(lo_ring * ratio**i)) for i in range(k)]
    above = None if hi is not None else 1 << top
    return bounds, above


# ---------------------------------------------------------------------------------- exp
def exp(x: Tensor, party: Party) -> Tensor:
    """``[exp(x)]`` by a degree-4 polynomial on ``x / 64`` and six squarings.

    1. ``y = x / 64`` is ``x`` read at scale ``F = f + 6`` (no operation).
    2. ``p(y)``, a relative-minimax degree-4 fit of ``exp`` on ``[-1/4, 1/4]`` (error
       ``5e-7``), at scale ``F`` (2 rounds: ``y**2``, then ``y**3, y**4``).
    3. Six squarings ``v <- v**2``, the ``j``-th truncating to scale ``F - j - 1``, ending at
       ``f``.

    Domain and error: for ``x`` in ``[-16, 8]``: relative error below ``1e-4`` where
    ``exp(x) >= 1`` (measured ``8.5e-5``), absolute error below 2 ulps below that. On
    ``[-4, 4]``, the benchmark domain: max absolute error ``2.1e-3`` at ``exp(4) = 54.6``
    (CrypTen's limit method: 1.83, i.e. 3.5%). For ``x`` in ``[-160, -16]`` the result is below ``2**-16`` and within 2 ulps
    of 0. Out of domain: ``x < -170`` makes the polynomial grow and the result is garbage;
    ``x > 16`` overflows ``2**(47 - f)``-scale values (garbage). Between 8 and 16 the 2-party
    local truncation of the last squaring fails with probability up to ``exp(x) * 2**-30`` per
    element. Callers with unbounded inputs clamp first (softmax does).

    Cost: 8 rounds (2 parties); each party sends ``16 + 16 + 6 * 8 = 80`` bytes per element to
    each peer. Exact truncation (the default, any ``N``): 10 rounds (:func:`exp_lazy`; 18
    with a truncation round per squaring).
    Security: semi-honest, as Beaver products and truncation.
    Reference: range reduction ``exp(x) = exp(x/2**s)**(2**s)`` as in CrypTen (Knott et al.,
    NeurIPS'21), here with a polynomial core instead of the ``(1 + x/2**s)`` limit.
    """
    return settle(exp_lazy(x, party), party, tag="exp.trunc")


def exp_lazy(x: Tensor, party: Party) -> Operand:
    """:func:`exp` with every truncation fused into the next product and the last one left
    pending (:mod:`~crypten_lite.protocols.fused`): 10 rounds with exact truncation, 9 of them
    before the final truncation (18 when each truncation is a round of its own).

    Cost, security and reference: as :func:`exp`.
    """
    f = party.frac_bits
    s = _EXP_SQUARINGS
    scale = f + s
    coeffs = fit(_exp64, -0.25, 0.25, 4, True)
    # p(y) = sum c_k t**k with t = 4y: rescale the coefficients to y directly.
    c_y = [c * 4.0**k for k, c in enumerate(coeffs)]
    (v,) = evaluate_lazy(x, [c_y], party, scale, scale, coeff_bits=14)
    for j in range(s):
        (v,) = square_many_lazy([v], party, scale - j + 1, tag="exp.square")
    return v


# ---------------------------------------------------------------------------------- reciprocal
def _newton_reciprocal(
    m: Tensor, y: Operand, party: Party, scale: int, steps: int, sigma: Tensor | None = None
) -> Operand:
    """``y <- y (2 - m y)`` (quadratic convergence); ``m`` at scale f, ``y`` at ``scale``.

    With ``sigma`` (``+-1`` ring integers), the first step also forms ``sigma * y`` in its first
    round and continues with it, so the result carries the sign at no extra round. Truncations
    are fused into the next product; the result is left pending (2 rounds per step).
    """
    f = party.frac_bits
    for i in range(steps):
        pairs: list[tuple[Operand, Operand]] = [(m, y)]
        if i == 0 and sigma is not None:
            pairs += [(y, sigma), (m, sigma)]  # (sigma m, sigma y) keeps m y, flips 1/m
        outs = mul_many_lazy(pairs, party, [f, 0, 0][: len(pairs)], tag="recip.newton")
        e = _two_minus(outs[0], party, scale)
        if len(outs) > 1:
            y, m_new = outs[1], outs[2]
            assert isinstance(m_new, Tensor)  # bits 0: nothing pending
            m = m_new
        (y,) = mul_many_lazy([(y, e)], party, scale, tag="recip.newton")
    return y


def _sub(a: Operand, b: Operand) -> Operand:
    """``a - b`` for operands at the same scale (pending ones aligned)."""
    if isinstance(a, Pending):
        return a + (-b)
    if isinstance(b, Pending):
        return -b + a
    return a - b


def _two_minus(v: Operand, party: Party, scale: int) -> Operand:
    """``2 - v`` for ``v`` at ``scale`` (party 0 adds the constant)."""
    two = torch.zeros_like(v.share if isinstance(v, Pending) else v)
    if party.rank == 0:
        two += 2 << scale
    return -v + two if isinstance(v, Pending) else two - v


def _sigma(sign: Tensor, party: Party) -> Tensor:
    """``1 - 2 s`` for arithmetic 0/1 shares ``s``."""
    out = -2 * sign
    if party.rank == 0:
        out += 1
    return out


def reciprocal(
    x: Tensor,
    party: Party,
    *,
    positive: bool = False,
    lo: float | None = None,
    hi: float | None = None,
) -> Tensor:
    """``[1 / x]``.

    1. (Unless ``positive``) :func:`~crypten_lite.protocols.comparison.abs_and_sign`: ``|x|``
       and ``s = [x < 0]`` (4 rounds).
    2. :func:`~crypten_lite.protocols.polynomial.normalize` ``|x| = m * base``, ``m`` in
       ``[1, 16)`` (4 rounds; skipped when the ``lo``/``hi`` hint spans at most a factor 16).
    3. ``y0 = p(m)``, a degree-12 relative fit of ``1/m`` (error ``2.7e-3``, 4 rounds; Estrin
       needs one product more than degree 8); one Newton step ``y <- y (2 - m y)`` (2 rounds)
       squares the error to below ``1e-5``. With a hint within a factor 16 (softmax): a
       degree-8 fit on ``[lo, hi]`` (3 rounds) and two Newton steps (4 rounds).
    4. ``1/x = y / base``: one product with the per-bucket public factors. The sign
       ``1 - 2s`` joins ``y`` in the first Newton round (no round of its own).

    Args:
        positive: the caller promises ``x > 0``: no sign comparison.
        lo, hi: optional domain hint, a promise that every ``|x|`` lies in ``[lo, hi]``: the
            buckets then start at ``lo`` (growing by 16) and stop once they cover ``hi``,
            without the saturation threshold above, so ``[0.5, 20]`` costs 2 thresholds
            instead of 9. Inputs outside the promise get garbage.

    Domain and error: ``|x|`` in ``[2**-16, 2**16)`` (ring values ``[1, 2**32)``, 8 buckets):
    error at most ``2e-4 |1/x| + 2`` ulps (measured: relative ``2.0e-5`` where ``|1/x| >= 1``;
    below that the fixed-point resolution dominates). ``x = 0`` returns ``2**16`` (saturation,
    documented); ``|x| >= 2**16`` returns 0, within one ulp of ``1/x``. With ``positive``,
    ``x <= 0`` returns ``2**16``. With 2 parties the local truncation behind results near
    ``2**16`` fails with probability up to ``2**-22`` per element.

    Cost (2 parties): 15 rounds (11 with ``positive``; 7 with a ``lo``/``hi`` hint within a
    factor 16, 11 for signed inputs with it), about ``250`` bytes per element to each peer
    (9 thresholds plus the sign's comparison; products; measured 252, ``positive`` 206, the
    hint ``[1, 10]`` with ``positive`` 136). Exact truncation (the default): 17 rounds (28
    unfused), about ``210`` bytes per element.
    Security: semi-honest; comparisons and products as in their modules.
    Reference: normalisation plus Newton-Raphson as in Catrina and Dragulescu, "Secure division
    with fixed-point numbers", and Aly and Smart (ACNS'19) for MPC reciprocals.
    """
    return settle(
        reciprocal_lazy(x, party, positive=positive, lo=lo, hi=hi), party, tag="recip.trunc"
    )


def reciprocal_lazy(
    x: Tensor,
    party: Party,
    *,
    positive: bool = False,
    lo: float | None = None,
    hi: float | None = None,
) -> Operand:
    """:func:`reciprocal` with its last truncation left pending for a following product
    (:mod:`~crypten_lite.protocols.fused`); every inner truncation rides in the next product.

    Cost, security and reference: as :func:`reciprocal`.
    """
    f = party.frac_bits
    scale = internal_scale(party)
    sigma = None
    a = x
    if not positive:
        a, sign = abs_and_sign(x, party)
        sigma = _sigma(sign, party)
    if lo is not None and hi is not None and 0 < lo < hi <= 16 * lo:
        # The hint bounds x: fit 1/x on [lo, hi] directly; saturation is the caller's promise.
        coeffs = fit(_recip, float(lo), float(hi), 8, True)
        t = public_affine_lazy(a, party, f, 2 / (hi - lo), -(hi + lo) / (hi - lo), scale)
        (y,) = evaluate_lazy(t, [coeffs], party, scale, scale, t_bound=1.0)
        y = _newton_reciprocal(a, y, party, scale, 2, sigma)
        return _rescale_lazy(y, party, scale, f)
    # above 2**(32 - f) = 2**16 the result is below one ulp: the top bucket returns 0
    bounds, top = _buckets(party, lo, hi, 4, top=2 * party.frac_bits)
    norm = normalize(a, party, bounds=bounds, top=top)
    coeffs = fit(_recip, 1.0, 16.0, 12, True)
    t = public_affine_lazy(norm.mantissa, party, f, 2 / 15, -17 / 15, scale)
    (y,) = evaluate_lazy(t, [coeffs], party, scale, scale, t_bound=1.0)
    y = _newton_reciprocal(norm.mantissa, y, party, scale, 1, sigma)
    factors = [float(1 << f), *[1 / b for b in norm.bases], 0.0]
    return scale_by_buckets_lazy(y, norm.onehot, factors, party, scale)


def _rescale_lazy(y: Operand, party: Party, src: int, dst: int) -> Operand:
    """``y`` from scale ``src`` down to ``dst``: more pending bits (or a pending truncation)."""
    if isinstance(y, Pending):
        return Pending(y.share, y.bits + src - dst)
    return lazy(y, party, src - dst)


def div(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x / y]`` for sharings ``x`` and ``y``, with the relative precision of ``1 / m``
    (not of ``1 / y`` at scale ``f``, which is 0 for ``|y| >= 2**16``).

    1. ``|y|``, ``s = [y < 0]`` (4 rounds); normalise ``|y| = m 2**e`` over the whole range
       (thresholds ``16**i`` up to ``2**60`` in the ring, 5 rounds).
    2. ``r = +-1/m`` as in :func:`reciprocal` (degree-12 fit and one Newton step carrying the
       sign, 6 rounds).
    3. ``x 2**-e`` (one round, in parallel buckets): the exponents are grouped by 12, group
       ``g`` multiplies ``x >> 12 g`` (a truncated copy made up front) by its buckets' public
       ``2**(12 g + 12 - e)``, so every product is ``x 2**-e`` times ``2**(12 + f)`` and exact
       shifts lose at most one ulp of ``x 2**-e``.
    4. ``x / y = (x 2**-e) * r`` (1 round).

    Domain and error: ``|y|`` in ``[2**-16, 2**44)``: relative error ``2e-5`` of ``x / y``
    plus ulps (``|x 2**-e|`` is at most ``16 |x / y|``). ``|y| >= 2**44`` is read as ``2**44``;
    ``y = 0`` gives ``x * 2**16`` (the reciprocal's saturation), garbage if that leaves the
    ring. With 2 parties the products are ``|x / y| * 2**36`` in the ring (local truncation
    fails with probability ``|x / y| * 2**-28``).

    Cost (2 parties): 17 rounds (the old ``x * reciprocal(y)``: 16, wrong above ``2**16``);
    exact truncation (the default): 20 rounds (31 unfused).
    Security: semi-honest, as :func:`reciprocal` and Beaver products.
    Reference: as :func:`reciprocal`.
    """
    f = party.frac_bits
    scale = internal_scale(party)
    groups = [0, 12, 24, 36]  # x >> g for the exponents e in [g, g + 12) (and e < 12 with 0)
    x_shifted = truncate_many([x] * (len(groups) - 1), groups[1:], party)
    a, sign = abs_and_sign(y, party)
    bounds, top = _buckets(party, None, None, 4)
    norm = normalize(a, party, bounds=bounds, top=top)
    coeffs = fit(_recip, 1.0, 16.0, 12, True)
    t = public_affine_lazy(norm.mantissa, party, f, 2 / 15, -17 / 15, scale)
    (r,) = evaluate_lazy(t, [coeffs], party, scale, scale, t_bound=1.0)
    r = _newton_reciprocal(norm.mantissa, r, party, scale, 1, _sigma(sign, party))
    # bucket exponents: nonpos (y = 0) as e = -f (1/ulp), buckets, and above as the top
    exps = [-f, *[round(math.log2(b)) for b in norm.bases], (top or 1).bit_length() - 1 - f]
    view = (-1,) + (1,) * (norm.onehot.dim() - 1)
    pairs = []
    for i, g in enumerate(groups):
        lo = g if i else -(1 << 20)
        hi = groups[i + 1] if i + 1 < len(groups) else 1 << 20
        w = [1 << (g + 12 - e) if lo <= e < hi else 0 for e in exps]
        if any(w):
            sel = (norm.onehot * torch.tensor(w, dtype=torch.int64).view(view)).sum(0)
            pairs.append(([x, *x_shifted][i], sel))
    parts = mul_many(pairs, party, 12, tag="div.scale")  # x 2**-e at scale f
    (out,) = mul_many([(sum(parts[1:], parts[0]), r)], party, scale, tag="div")
    return out


# ---------------------------------------------------------------------------------- roots
def _newton_rsqrt(m: Tensor, y: Operand, party: Party, scale: int, steps: int) -> Operand:
    """``y <- y (3 - m y**2) / 2`` in 2 rounds per step: ``m y`` and ``y**2`` together, then
    their product. Truncations are fused into the next product; the halving is one more
    pending bit; the result is left pending."""
    f = party.frac_bits
    for _ in range(steps):
        st: dict[int, Tensor] = {}
        my, yy = mul_many_lazy([(m, y), (y, y)], party, [f, scale], tag="rsqrt.newton", settled=st)
        y_set = st[id(y)] if isinstance(y, Pending) else y
        (myyy,) = mul_many_lazy([(my, yy)], party, scale, tag="rsqrt.newton")
        three_y = 3 * y_set
        diff = -myyy + three_y if isinstance(myyy, Pending) else three_y - myyy
        y = _rescale_lazy(diff, party, 1, 0)  # halve: one truncation bit
    return y


def inv_sqrt(
    x: Tensor, party: Party, *, lo: float | None = None, hi: float | None = None
) -> Tensor:
    """``[1 / sqrt(x)]`` for ``x > 0``.

    1. Normalise ``x = m * 2**e`` (4 rounds).
    2. ``y0``: degree-8 relative fit of ``m**-1/2`` on ``[1, 16]`` (error 4.5e-3, 3 rounds).
    3. One Newton step ``y <- y (3 - m y**2) / 2`` (2 rounds): error below ``4e-5``.
    4. Multiply by the per-bucket factor ``2**(-e/2)`` (1 round).

    Args:
        lo, hi: optional domain hint, a promise that every input lies in ``[lo, hi]``: the
            buckets then start at ``lo`` (growing by 16) and stop once
            they cover ``hi``, without the saturation threshold above, so ``[0.1, 20]`` costs
            2 thresholds instead of 10. Inputs outside the promise get garbage.

    Domain and error: ``x`` in ``[2**-16, 2**44)``, the whole positive ring up to ``2**60``
    (swept in ``tests/mpc/test_numerics_norm.py``): error at most ``1e-4 |result| + 2`` ulps
    (measured relative ``4.9e-5`` where the result is at least 1). ``x <= 0`` returns ``2**8``
    (saturation); ``x >= 2**44`` returns 0 (the true value is below ``2**-22``).

    Cost (2 parties): 11 rounds with local truncation (10 before the range reached ``2**44``:
    the high buckets' exact truncation); about ``250`` bytes per element to each peer (16
    thresholds; fewer with a hint, which also keeps 10 rounds when it stays below ``2**20``).
    Exact truncation (the default): 12 rounds (22 unfused).
    Security: semi-honest. Reference: as :func:`reciprocal`.
    """
    f = party.frac_bits
    scale = internal_scale(party)
    bounds, top = _buckets(party, lo, hi, 4)
    norm = normalize(x, party, bounds=bounds, top=top)
    coeffs = fit(_rsqrt, 1.0, 16.0, 8, True)
    t = public_affine_lazy(norm.mantissa, party, f, 2 / 15, -17 / 15, scale)
    (y,) = evaluate_lazy(t, [coeffs], party, scale, scale, t_bound=1.0)
    y = _newton_rsqrt(norm.mantissa, y, party, scale, 1)
    factors = [2.0 ** (f / 2), *[b**-0.5 for b in norm.bases], 0.0]
    return scale_by_buckets(y, norm.onehot, factors, party, scale)


def sqrt(x: Tensor, party: Party, *, lo: float | None = None, hi: float | None = None) -> Tensor:
    """``[sqrt(x)]`` for ``x >= 0``.

    1. Normalise ``x = m * 2**e`` (4 rounds).
    2. ``sqrt(m)``: degree-10 relative fit on ``[1, 16]`` (error ``1e-4``, 4 rounds).
    3. Multiply by the per-bucket factor ``2**(e/2)`` (1 round).

    Args:
        lo, hi: optional domain hint, as for :func:`inv_sqrt`.

    Domain and error: ``x`` in ``[2**-16, 2**44)``: error at most ``2e-4 |result| + 2`` ulps
    (measured relative ``1.2e-4``; CrypTen ``4.7e-3`` on its benchmark domain). ``x <= 0``
    returns 0; ``x >= 2**44`` returns ``2**22`` (saturation, at most a factor 2 low up to the
    largest positive ring value ``2**47``).

    Cost (2 parties): 10 rounds with local truncation (CrypTen: 18); about ``220`` bytes per
    element to each peer (16 thresholds; 2 for the hint ``[0.1, 20]``, about ``140`` bytes, 9
    rounds). Exact truncation (the default): 11 rounds (19 unfused).
    Security: semi-honest. Reference: as :func:`reciprocal`.
    """
    f = party.frac_bits
    scale = internal_scale(party)
    bounds, top = _buckets(party, lo, hi, 4)
    norm = normalize(x, party, bounds=bounds, top=top)
    coeffs = fit(_sqrt, 1.0, 16.0, 10, True)
    t = public_affine_lazy(norm.mantissa, party, f, 2 / 15, -17 / 15, scale)
    (y,) = evaluate_lazy(t, [coeffs], party, scale, scale, t_bound=1.0)
    top_real = (top if top is not None else 0) / 2.0**f
    factors = [0.0, *[b**0.5 for b in norm.bases], top_real**0.5]
    return scale_by_buckets(y, norm.onehot, factors, party, scale)


# ---------------------------------------------------------------------------------- log
def log(x: Tensor, party: Party, *, lo: float | None = None, hi: float | None = None) -> Tensor:
    """``[ln(x)]`` for ``x > 0``.

    1. Normalise ``x = m * 2**e`` with ``m`` in ``[1, 4)`` (thresholds ``4**i``; 4 rounds).
    2. ``ln(m)``: degree-10 fit on ``[1, 4]`` (error ``1.5e-6``, 4 rounds).
    3. Add the per-bucket public offset ``e ln 2`` (local).

    Args:
        lo, hi: optional domain hint, a promise that every input lies in ``[lo, hi]``: the
            buckets then start at ``lo`` (growing by 4) and stop once they cover ``hi``,
            without the saturation threshold above, so ``[0.9, 10]`` (log-softmax) costs 2
            thresholds instead of 18. Inputs outside the promise get garbage.

    Domain and error: ``x`` in ``[2**-16, 2**44)`` (or the hint): absolute error below
    ``1e-4`` (measured ``3.4e-5``). Saturation: ``x <= 0`` returns ``-(f + 1) ln 2`` (about
    -11.8 for ``f = 16``, below ``ln`` of the smallest positive value); without a hint, ``x``
    at or above ``2**44`` returns ``ln(2**44)``.

    Cost (2 parties): 9 rounds with local truncation (the high buckets' exact truncation);
    about ``170`` bytes per element to each peer (30 thresholds; ``[0.9, 10]`` needs 4 and 8
    rounds). Exact truncation (the default): one round more (measured 10; the truncations ride
    in the next products).
    Security: semi-honest. Reference: as :func:`reciprocal`.
    """
    f = party.frac_bits
    scale = internal_scale(party)
    bounds, top = _buckets(party, lo, hi, 2)
    norm = normalize(x, party, bounds=bounds, top=top)
    coeffs = fit(_log, 1.0, 4.0, 10)
    t = public_affine_lazy(norm.mantissa, party, f, 2 / 3, -5 / 3, scale)
    (y,) = evaluate_lazy(t, [coeffs], party, scale, f, t_bound=1.0)
    ln2 = math.log(2.0)
    top_log = math.log((top if top is not None else 1) / 2.0**f)
    offsets = [-(f + 1) * ln2, *[math.log(b) for b in norm.bases], top_log]
    view = (-1,) + (1,) * x.dim()
    w = torch.tensor([round(o * (1 << f)) for o in offsets], dtype=torch.int64).view(view)
    # special buckets have mantissa 1: ln(1) ~ 0 from the polynomial, replaced by the offset
    return settle(y + (norm.onehot * w).sum(0), party, tag="log.trunc")


# ---------------------------------------------------------------------------------- powers
POW_LIMIT_LOG2 = 30  # |x ** p| is exact up to 2**30 (about 1.07e9) and saturates above


def _pow_m(p: float) -> Callable[[Tensor], Tensor]:
    def fn(t: Tensor) -> Tensor:
        return t**p

    return fn


_POW_FNS: dict[float, Callable[[Tensor], Tensor]] = {}


def _pow_fit(p: float) -> tuple[float, ...]:
    """Relative fit of ``m**p`` on ``[1, 2]``, degree 10 (cached per exponent: the same
    function object each time, so :func:`fit`'s cache hits)."""
    fn = _POW_FNS.setdefault(p, _pow_m(p))
    return fit(fn, 1.0, 2.0, 10, True)


def _pow_normalized(x: Tensor, p: float, party: Party, limit_log2: float) -> Tensor:
    """``x**p`` for ``x > 0`` and ``|p| <= 4`` as ``m**p * 2**(e p)`` with ``x = m 2**e``, ``m``
    in ``[1, 2)``.

    The bucket factors are capped at ``2**(limit_log2 + |p|) / max(m**p)``: a result up to
    ``2**limit_log2`` always lies in an uncapped bucket (its bucket's lower end is within a
    factor ``2**|p|`` of it), and a capped bucket's results lie in
    ``[2**limit_log2, 2**(limit_log2 + |p|)]``. The final product is truncated exactly by the
    dealer (results of ``2**30`` are ring values of ``2**46``, far past the 2-party local
    truncation's safe range).
    """
    f = party.frac_bits
    scale = internal_scale(party)
    bounds, top = _buckets(party, None, None, 1)
    norm = normalize(x, party, bounds=bounds, top=top)
    t = public_affine_lazy(norm.mantissa, party, f, 2.0, -3.0, scale)
    (v,) = evaluate_lazy(t, [_pow_fit(p)], party, scale, scale, t_bound=1.0)
    peak = max(1.0, 2.0**p)  # the largest m**p on [1, 2)
    cap = 2.0 ** (limit_log2 + abs(p)) / peak
    top_real = (top if top is not None else 1) / 2.0**f
    zero_or_cap = cap if p < 0 else 0.0  # x <= 0: 1/0-like saturation, or 0
    factors = [zero_or_cap, *[b**p for b in norm.bases], top_real**p]
    return _scale_exact(v, norm.onehot, [min(fa, cap) for fa in factors], party, scale)


def _scale_exact(
    v: Operand, onehot: Tensor, factors: list[float], party: Party, scale_v: int
) -> Tensor:
    """``v * factor_bucket`` at scale ``f`` for ``|v| < 16`` at ``scale_v`` and factors up to
    ``2**30``: factors grouped by 12 binary orders, group ``g`` with ``45 - scale_v - 12 g``
    fractional bits (relative precision ``2**-25``), products below ``2**61`` truncated
    exactly by the dealer."""
    f = party.frac_bits
    groups: dict[int, list[int]] = {}
    for i, fa in enumerate(factors):
        if fa != 0:
            groups.setdefault(math.floor(math.log2(abs(fa)) / 12), []).append(i)
    view = (-1,) + (1,) * (onehot.dim() - 1)
    pairs = []
    bits = []
    for g, idx in sorted(groups.items()):
        b = min(40, max(0, 45 - scale_v - 12 * g))
        w = torch.tensor(
            [round(fa * 2.0**b) if i in idx else 0 for i, fa in enumerate(factors)],
            dtype=torch.int64,
        ).view(view)
        if bool(w.any()):  # factors below 2**-40 give results far below one ulp: 0
            pairs.append((v, (onehot * w).sum(0)))
            bits.append(scale_v + b - f)
    if not pairs:
        return torch.zeros_like(v.share if isinstance(v, Pending) else v)
    prods = mul_many(pairs, party, 0, tag="pow.scale")
    outs = truncate_dealer_many(prods, bits, party, tag="pow.trunc")
    return sum(outs[1:], outs[0])


def pow(x: Tensor, exponent: float, party: Party) -> Tensor:  # noqa: A001 - torch's name
    """``[x ** p]`` for a public exponent.

    * integer ``p >= 0``: square-and-multiply, one round per bit of ``p`` (squarings and
      partial products of one bit share a round; exact truncation adds one round at the end,
      each truncation riding in the next bit's products); exact up to one ulp per product (the
      caller keeps ``x**p`` inside the ring: no saturation here).
    * every other ``p`` (negative, fractional): normalise ``|x| = m 2**e`` with ``m`` in
      ``[1, 2)`` (thresholds ``2**i`` up to ``2**60`` in the ring), ``m**p`` by a degree-10
      relative fit on ``[1, 2]`` (error below ``1e-6`` for ``|p| <= 4``), times the public
      per-bucket factor ``2**(e p)`` in one product truncated exactly by the dealer. For an
      integer ``p < 0`` the sign ``(-1)**p`` of ``x`` is applied by one more product (4 rounds
      for the sign comparison run first).

    Domain, error and saturation (one rule, the same on every party, nothing revealed):
    results are correct to a relative ``1e-4`` plus 2 ulps wherever ``|x**p| <= 2**30``
    (about ``1.07e9``; e.g. ``0.01 ** -3 = 1e6`` and ``0.001 ** -3 = 1e9`` fit, ``1e-5 ** -3``
    does not) and ``|x|`` lies in ``[2**-16, 2**44)``. Larger results saturate: they come
    out between ``2**30`` and ``2**(30 + |p|)``, never garbage; ``x = 0`` with ``p < 0`` gives
    a value in that range. Non-integer ``p`` with ``x <= 0`` (``nan`` in torch) gives 0 for
    ``p > 0`` and the saturated value for ``p < 0``. ``|x| >= 2**44`` is treated as ``2**44``.
    ``|p| > 4``: ``(x**(p/k))**k`` with ``k`` a power of two and exact squarings (relative
    error times ``k``); correct up to ``2**(30 - |p|)``, saturated results up to ``2**30``. ``|p| > 16`` (not integer, or negative) raises
    ``ValueError`` on every party (results would leave the ring).

    Cost (2 parties): normalisation 5 rounds, polynomial 4, the factor product with its exact
    truncation 2 (11 rounds; +5 for a negative integer ``p``: sign comparison and product);
    about ``8 + 5 * 61`` bytes per element for the thresholds plus the products.
    Security: semi-honest, as the pieces.
    Reference: square-and-multiply; normalisation as in Aly and Smart, ACNS'19.
    """
    p = float(exponent)
    f = party.frac_bits
    if p.is_integer() and p >= 0:
        k = int(p)
        if k == 0:
            return torch.full_like(x, 1 << f) if party.rank == 0 else torch.zeros_like(x)
        # truncations stay pending into the next level's products (protocols/fused.py)
        result: Operand | None = None
        base: Operand = x
        while True:
            pairs: list[tuple[Operand, Operand]] = []
            if k & 1 and result is not None:
                pairs.append((result, base))
            if k > 1:
                pairs.append((base, base))
            outs = mul_many_lazy(pairs, party, tag="pow")
            if k & 1:
                result = base if result is None else outs.pop(0)
            k >>= 1
            if not k:
                break
            base = outs.pop(0)
        assert result is not None
        out = settle(result, party, tag="pow.trunc")
        return out.clone() if out is x else out
    if abs(p) > 16:
        raise ValueError(
            f"party {party.rank}: pow supports |exponent| <= 16 for negative or fractional "
            f"exponents (results would leave the ring), got {p}"
        )
    k = 1 << max(0, math.ceil(math.log2(abs(p) / 4)))  # inner exponent p / k within [-4, 4]
    # the inner results stay below 2**(30 / k), so the k-th power stays below 2**30
    inner_limit = POW_LIMIT_LOG2 / k - (abs(p) / k if k > 1 else 0.0)
    sign = None
    if p.is_integer():
        x, sign = abs_and_sign(x, party)
    mag = _pow_normalized(x, p / k, party, inner_limit)
    while k > 1:  # squarings with the dealer's exact truncation (values up to 2**46)
        (sq,) = mul_many([(mag, mag)], party, 0, tag="pow.square")
        (mag,) = truncate_dealer_many([sq], [f], party, tag="pow.trunc")
        k //= 2
    if sign is None or int(p) % 2 == 0:
        return mag
    (out,) = mul_many([(mag, _sigma(sign, party))], party, 0, tag="pow.sign")
    return out


def norm(
    x: Tensor,
    party: Party,
    p: float = 2,
    dim: int | None = None,
    keepdim: bool = False,
) -> Tensor:
    """``[||x||_p]`` over ``dim`` (all elements when ``None``), for ``p`` in ``{1, 2, inf}``.

    * ``p = 2``: ``sqrt(sum x**2)`` (one square round, then :func:`sqrt`: 10 rounds).
    * ``p = 1``: ``sum |x|`` (one comparison: 4 rounds).
    * ``p = inf``: ``max |x|`` (4 + 5 per tree level rounds).

    Error: as :func:`sqrt` (``p = 2``), exact otherwise.

    Cost: as the pieces named above.
    Security: semi-honest, as the pieces.
    Reference: as :func:`sqrt` and :mod:`crypten_lite.protocols.reduction`.
    """
    f = party.frac_bits
    dims = tuple(range(x.dim())) if dim is None else (dim,)
    if p == 2:
        (sq,) = square_many([x], party, f, tag="norm")
        total = sq.sum(dims, keepdim=keepdim)
        return sqrt(total, party)
    if p == 1:
        a, _ = abs_and_sign(x, party)
        return a.sum(dims, keepdim=keepdim)
    if math.isinf(p) and p > 0:
        a, _ = abs_and_sign(x, party)
        flat = a if dim is not None else a.reshape(-1)
        values, _ = max_dim(flat, party, dim if dim is not None else -1, keepdim)
        return values
    raise ValueError(f"party {party.rank}: norm supports p in (1, 2, inf), got {p}")


# ---------------------------------------------------------------------------------- sin, cos
def _sincos(x: Tensor, party: Party) -> tuple[Tensor, Tensor]:
    """``(sin x, cos x)`` at scale ``f``.

    1. Turns: ``z = x / (2 pi)`` with ``f + 24`` fractional bits, ``x * round(2**24 / 2pi)``.
       Each party keeps its share modulo ``2**(f + 24)``: the shares then sum to
       ``frac(z) + j`` for an integer ``0 <= j < N``, which leaves ``sin``/``cos`` unchanged.
       Dropping the low 20 bits of each share leaves ``u`` turns at scale ``f + 4`` (error
       below ``N`` units of ``2**-(f+4)`` turn).
    2. Angle ``a = 2 pi u / 2**s`` with ``2 pi N / 2**s <= 0.4`` (``s = 5`` for 2 parties).
    3. Taylor polynomials of degree 7 (sin) and 6 (cos) at scale ``f + 4`` (3 rounds).
    4. ``s`` squarings of ``C + iS``: ``(S, C) <- (2 S C, C**2 - S**2)`` (one round each);
       radial and angular errors both double per step (``2 C**2 - 1`` would quadruple them).
    """
    f = party.frac_bits
    scale = internal_scale(party)
    g = 24
    turns = x * round((1 << g) / (2 * math.pi))
    keep = (1 << (f + g)) - 1
    u = (turns & keep) >> (f + g - scale)  # at scale f + 4; local: shares taken mod 2**(f+g)
    n = party.world_size
    s = max(1, math.ceil(math.log2(2 * math.pi * n / 0.4)))
    angle = public_affine(u, party, scale, 2 * math.pi / (1 << s), 0.0, scale)
    sin_c = [0.0, 1.0, 0.0, -1 / 6, 0.0, 1 / 120, 0.0, -1 / 5040]
    cos_c = [1.0, 0.0, -0.5, 0.0, 1 / 24, 0.0, -1 / 720]
    # truncations stay pending into the next squaring (protocols/fused.py)
    sv, cv = evaluate_lazy(angle, [sin_c, cos_c], party, scale, scale, coeff_bits=20)
    for _ in range(s):
        sc, cc, ss = mul_many_lazy(
            [(sv, cv), (cv, cv), (sv, sv)], party, scale, tag="sincos.square"
        )
        sv = sc.scaled(2) if isinstance(sc, Pending) else sc << 1
        cv = _sub(cc, ss)
    sin_v, cos_v = settle_many(
        [_rescale_lazy(sv, party, scale, f), _rescale_lazy(cv, party, scale, f)],
        party,
        tag="sincos.trunc",
    )
    return sin_v, cos_v


def sin(x: Tensor, party: Party) -> Tensor:
    """``[sin(x)]`` for any ``x``.

    Periodic reduction costs no communication (see :func:`_sincos`); then Taylor polynomials on
    a small angle and ``s`` squarings of ``cos + i sin``.

    Domain and error: any ``x``; absolute error below ``2.5e-4 + |x| * 2**-22`` (the last term
    from encoding ``1 / 2pi``; measured ``1.1e-4`` (2 parties) and ``2e-4`` (3 parties) on
    ``[-200, 200]``).

    Cost (2 parties): 3 + 5 = 8 rounds (9 for 3 parties: one more squaring); exact truncation
    (the default): 11 (12 for 3 parties; 18 and 20 unfused); ``~300`` bytes
    per element to each peer. ``sin`` and ``cos`` come together; each function returns one.
    Security: semi-honest; the reduction is local.
    Reference: double-angle range extension, e.g. as used for MPC trigonometry in
    Aly and Smart, ACNS'19.
    """
    return _sincos(x, party)[0]


def cos(x: Tensor, party: Party) -> Tensor:
    """``[cos(x)]`` for any ``x``: as :func:`sin` (same cost and error).

    Cost, security and reference: as :func:`sin`.
    """
    return _sincos(x, party)[1]
