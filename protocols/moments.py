"""Layer L3: standardisation over some dimensions — ``(x - mean) / sqrt(var + eps)`` — for
layer, batch, group and RMS-type normalisation, correct over the whole range of variances a
fixed-point value can have, with ``eps`` far below one ulp.

Why not ``rsqrt(mean(xc * xc) + eps)`` at scale ``f``: for a row with standard deviation
``1e-3`` the variance ``1e-6`` is below one ulp (``2**-16``), the centred values ``xc`` carry a
rounding error of the mean that is 1.5 % of them, and ``eps = 1e-12`` is 0; for a standard
deviation of ``1e4`` the squares ``xc**2`` at scale ``2f`` need ``2**59`` of the ring before they
are summed. No single fixed scale holds both ends, so the computation runs in two stages, with
exact integers where precision matters:

* ``D = n x - sum(x)`` is ``n * xc`` at scale ``f`` **exactly** (a local integer combination):
  no rounding of the mean enters.
* Stage 1 (coarse): ``S_c = sum((D >> t_c)**2) + eps_c``, with ``t_c`` chosen from ``n`` so that
  a standard deviation of ``2**-10`` still leaves ``D >> t_c`` about 2 units, is a coarse
  ``n**3 (var + eps) 4**(f - t_c)``. One comparison depth against the thresholds ``4**j``
  (:func:`~crypten_lite.protocols.comparison.sign_bits`, one opening for all of them, on one
  value per row) gives a one-hot bucket ``j``: ``var + eps`` is known within a factor of 4.
* Stage 2 (fine): ``y = D * 2**-k_j`` (one product with the bucket's public power of two; the
  high buckets start from ``D >> t_c``) has ``S = sum(y**2)`` in ``[2**P, 2**(P+2))`` (up to
  the coarse stage's rounding, below 7 %), exact integers again. ``eps`` enters as the
  per-bucket public integer ``eps * n**3 * 4**(f - k_j)``: full precision for any ``eps``.
* ``u = S / 2**P`` lies in ``[0.75, 5.25]``: ``u**-1/2`` is one degree-12 polynomial
  (relative error ``1.1e-5``, 4 rounds, no Newton step), and
  ``x_hat = y * sqrt(n) * 2**(-P/2) * u**-1/2`` needs no bucket factor at all (the scale
  ``2**k_j`` cancels); ``rstd`` and ``var`` are the bucket's public factor times it.

Everything per row (comparisons, polynomial) costs bytes per row, not per element.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from crypten_lite.protocols.beaver import beaver
from crypten_lite.protocols.comparison import sign_bits
from crypten_lite.protocols.conversion import inject_masked, open_masked_bits
from crypten_lite.protocols.fused import Operand, Pending, lazy, settled_value
from crypten_lite.protocols.polynomial import (
    evaluate_lazy,
    fit,
    mul_many,
    mul_many_lazy,
    public_affine_lazy,
    square_many_lazy,
    truncate_many,
)
from crypten_lite.protocols.truncation import resolve_method
from crypten_lite.runtime.party import Party

__all__ = ["Standardized", "standardize", "standardize_domain"]

Tensor = torch.Tensor

_STD_FLOOR_LOG2 = -10  # D >> t_c keeps 2 bits at standard deviation 2**-10 (~1e-3)
_TOP_LOG4 = 30  # last coarse threshold 4**30 = 2**60; S_c must stay below 2**62
_U_LO, _U_HI = 0.75, 5.25  # domain of the u**-1/2 polynomial
_U_SCALE = 20  # fractional bits of u and of the polynomial
_W_CUT = 8  # bits truncated from y * weight (see standardize)
_Y_EXTRA = 7  # more bits of y for the outputs with exact truncation (see standardize)


@dataclass(eq=False)
class Standardized:
    """Results of :func:`standardize`, int64 shares at scale ``f``.

    Attributes:
        x_hat: ``(x - mean) / sqrt(var + eps)``, the input's shape (``None`` when only the
            affine output was asked for).
        mean: the mean over the reduced dimensions (kept as size-1 dimensions).
        rstd: ``1 / sqrt(var + eps)``, shaped like ``mean``.
        var: the biased variance, shaped like ``mean`` (``None`` unless asked for).
        scaled: ``x_hat * weight`` when a weight was given (fused; see :func:`standardize`).
    """

    x_hat: Tensor | None
    mean: Tensor
    rstd: Tensor
    var: Tensor | None
    scaled: Tensor | None = None


@dataclass(frozen=True)
class _Plan:
    """Public parameters for ``n`` reduced elements (see the module docstring)."""

    n: int
    t_c: int  # coarse truncation of D
    j0: int  # first coarse threshold 4**j0
    p: int  # S = sum(y**2) lands in [2**p, 2**(p+2)); even
    c: int  # floor(log2(sqrt(n)))

    def k(self, j: int) -> int:
        """Shift of coarse bucket ``j`` (``S_c`` in ``[4**j, 4**(j+1))``): ``y = D / 2**k``."""
        return j + self.t_c - self.p // 2

    @property
    def buckets(self) -> list[int]:
        """Coarse bucket index per one-hot row: the bottom row reuses ``j0 - 1``; the last
        row (``S_c >= 4**30``) is bucket 30."""
        return [self.j0 - 1, *range(self.j0, _TOP_LOG4 + 1)]


def _plan(n: int, f: int) -> _Plan:
    lg = math.log2(n)
    # D >> t_c = n * xc * 2**(f - t_c): about 4 units when std(xc) = 2**_STD_FLOOR_LOG2
    t_c = max(0, round(lg) + f + _STD_FLOOR_LOG2 - 2)
    # S_c is about n * rms(D >> t_c)**2: the bottom bucket ends where that rms is 1 to 1.4
    # (the truncations' rounding adds at most n/4 to S_c: 25 % there, less above)
    j0 = max(1, math.ceil(lg / 2))
    # y's rms about 2**12.5 .. 2**13.5: y**2 and the products with y stay below 2**40
    p = 2 * math.ceil((25 + lg) / 2)
    return _Plan(n=n, t_c=t_c, j0=j0, p=p, c=int(math.floor(lg / 2)))


def standardize_domain(n: int, frac_bits: int = 16) -> tuple[float, float]:
    """``(lo, hi)``: the variances (plus eps) handled at full accuracy for ``n`` reduced
    elements; below ``lo`` ``rstd`` saturates (at most ``2 / sqrt(lo)``: the bottom bucket
    adds ``lo / 4`` to ``var + eps``), above ``hi`` the result is undefined.

    Cost: none (public arithmetic).

    Security and reference: not applicable (public constants).
    """
    plan = _plan(n, frac_bits)
    scale = n**3 * 4.0 ** (frac_bits - plan.t_c)  # S_c per unit of variance
    return 4.0**plan.j0 / scale, 2.0**61.5 / scale


def _onehot(s_c: Tensor, party: Party, thresholds: Sequence[int]) -> Tensor:
    """Arithmetic one-hot ``(len(thresholds) + 1, *s_c.shape)``: ``s_c < t_0``, then each
    ``[t_i, t_(i+1))``, then ``>= t_last``."""
    sb = sign_bits(s_c, party, list(thresholds), tag="standardize")
    b = sb.bits
    rows = torch.cat([b[:1], b[:-1] ^ b[1:]])
    d_pub = open_masked_bits(rows, sb.rho, party, tag="standardize.b2a")
    onehot = sb.unflatten(inject_masked(d_pub, sb.rho_a, party))
    last = -onehot.sum(0)
    if party.rank == 0:
        last += 1
    return torch.cat([onehot, last.unsqueeze(0)])


def _select(onehot: Tensor, values: Sequence[int]) -> Tensor:
    """``sum_i onehot_i * values_i`` (public integers; local)."""
    w = torch.tensor(list(values), dtype=torch.int64).view(-1, *([1] * (onehot.dim() - 1)))
    return (onehot * w).sum(0)


def _pending(v: Operand) -> list[Pending]:
    return [v] if isinstance(v, Pending) else []


def _factor_pairs(
    v: Operand, onehot: Tensor, factors: Sequence[float], scale_v: int, f: int
) -> tuple[list[tuple[Operand, Operand]], list[int]]:
    """Pairs whose truncated products sum to ``v * factor_bucket`` at scale ``f``.

    Factors are grouped by binary exponent in blocks of 6 (group ``g``: ``[2**6g, 2**(6g+6))``)
    and group ``g`` is encoded with ``max(0, 14 - 6g)`` fractional bits: a relative precision
    of ``2**-14`` while the product (``|v| < 8`` at ``scale_v = 20``) stays below ``2**43``;
    factors of ``2**18`` and more are integers (products up to ``2**23 * factor``).
    """
    groups: dict[int, list[int]] = {}
    for i, fa in enumerate(factors):
        if fa != 0:
            groups.setdefault(math.floor(math.log2(abs(fa)) / 6), []).append(i)
    pairs: list[tuple[Operand, Operand]] = []
    bits: list[int] = []
    for g, idx in sorted(groups.items()):
        # at least f - scale_v bits, so the product never needs a left shift (f > 20)
        b = max(0, 14 - 6 * g, f - scale_v)
        w = [round(factors[i] * 2.0**b) if i in idx else 0 for i in range(len(factors))]
        if any(w):
            pairs.append((v, _select(onehot, w)))
            bits.append(scale_v + b - f)
    return pairs, bits


def standardize(
    x: Tensor,
    party: Party,
    dims: Sequence[int],
    eps: float,
    *,
    need_var: bool = True,
    center: bool = True,
    weight: Tensor | None = None,
    weight_public: bool = False,
    need_x_hat: bool = True,
) -> Standardized:
    """``x_hat = (x - mean) / sqrt(var + eps)`` over ``dims`` (biased variance), with ``mean``,
    ``rstd`` and optionally ``var``; see the module docstring for the method.

    1. ``s = sum(x)``, ``D = n x - s`` (local, exact); ``mean = s / n`` (one truncation).
    2. ``y_c = D >> t_c`` (truncation); ``S_c = sum(y_c**2) + eps_c`` (1 round, exact squares).
    3. One-hot bucket of ``S_c`` against ``4**j0 .. 4**30`` (3 + 1 rounds, one value per row).
    4. ``y = D 2**(t_c-k_j) >> t_c`` or ``y_c 2**(K-k_j+t_c) >> K`` (1 round, both products;
       with exact truncation one product ``D 2**(K - k_j) >> K``, ``K = max k_j``).
    5. ``S = sum(y**2)`` (1 round; squares exact, or truncated so ``S`` stays near ``2**36``
       for large ``n``); ``u = (S + eps_j + floor_j) / 2**P`` (local; with exact truncation
       its truncation is left pending into step 6's first square).
    6. ``q = sqrt(n) 2**-c u**-1/2``: degree-12 relative fit on ``[0.75, 5.25]`` (4 rounds).
    7. ``x_hat = y' q 2**(c - P/2)``, ``rstd = q * bucket factor``, ``var = S / 2**P * bucket
       factor``: one round (and one to settle the truncations with exact truncation). With
       exact truncation ``y'`` is ``y`` with 7 more bits, truncated from step 4's product
       (``x_hat``'s resolution ``2**-20`` of the row's rms instead of ``2**-13``).

    Args:
        x: int64 shares at scale ``f``.
        dims: the reduced dimensions (``n`` elements per row).
        eps: public, any size: it is added exactly at the fine stage's scale, so ``1e-12`` or
            ``1e-5`` behave as in torch (not rounded to a multiple of ``2**-f``).
        need_var: also return the variance (one more pair in the last round).
        center: ``False`` for RMS normalisation: ``x / sqrt(mean(x**2) + eps)`` (``D = n x``,
            ``var`` is then the mean square; ``mean`` is still returned).
        weight: the affine weight (shares at scale ``f``, or the public encoded value on every
            party with ``weight_public``), broadcastable to ``x``: ``scaled = x_hat * weight``
            comes out of the last round without a product (and truncation round) of its own.
            ``y * weight`` rides in step 5's round (``weight`` is opened per element there,
            or is a local product when public) and its pending truncation by 8 bits in step
            7's; ``|weight| < 2**16``. Exact truncation only: with the 2-party local method
            the larger products would fail too often, so ``x_hat * weight`` is a product there.
        need_x_hat: ``False`` with a weight returns ``x_hat = None`` and opens ``y`` no more
            (inference: no backward needs it).

    Domain and error (2 and 3 parties, measured in ``tests/mpc/test_numerics_norm.py``):
    ``var + eps`` in ``standardize_domain(n)``, for ``n = 768``, ``f = 16`` about
    ``[2.4e-7, 2.3e9]`` (standard deviations ``5e-4 .. 4.8e4``): ``x_hat`` within ``2e-4``
    absolute with local truncation (its relative error 1e-5 plus the fixed-point resolution
    of ``y``, 2**-12 of the row's rms), ``1e-4`` with exact truncation (measured ``6e-5``
    for 32x768 at std 2: ``y'`` has 2**-19 of the rms, the output's own ulp remains); the
    input's own quantisation (``2**-17`` absolute) is what remains. ``rstd``
    and ``var``: relative ``1e-4`` plus one ulp of the output. Below the domain ``rstd``
    saturates as if ``var + eps`` were about ``lo`` (constant rows give ``x_hat = 0`` as in
    torch); above it the coarse sum wraps the ring and the result is undefined. With 2 parties
    the local truncations see values below ``2**40`` except for a row's largest elements when
    ``n`` is large (``2**(19 + 1.5 log2 n)``).

    Cost (2 parties): 12 rounds (as ``rsqrt(mean(xc * xc) + eps)``); per element 8 + 16 + 8 +
    16 bytes to each peer, per row about ``8 + 5 * 25`` bytes of comparison plus the polynomial.
    With exact truncation (the default, any ``N``) 13 rounds (``n = 768``; 25 unfused; 14
    before step 5's truncation was fused), also with a ``weight`` (a separate ``x_hat *
    weight`` costs 2 more): the truncations ride in the following products
    (:mod:`~crypten_lite.protocols.fused`). Measured for 16x768: 0.50 MB sent per party
    (0.70 MB before the single scale product and the per-row opening of ``q``; local
    truncation 0.60 MB); with a secret weight 0.61 MB in 13 rounds (0.90 MB in 16 unfused).
    Security: semi-honest; only masked values are opened (comparison, products).
    Reference: exact centring by ``n x - sum x`` and scaling by a one-hot power of two as in
    the normalisation step of Catrina and Saxena, FC'10 / Aly and Smart, ACNS'19; comparison as
    in :mod:`crypten_lite.protocols.comparison`.
    """
    f = party.frac_bits
    dims = sorted(d % x.dim() for d in dims) if x.dim() else []
    n = math.prod(x.shape[d] for d in dims)
    if n < 1:
        raise ValueError(f"party {party.rank}: standardize over an empty set of elements")
    plan = _plan(n, f)
    s = x.sum(dims, keepdim=True)
    d = x * n - s if center else x * n
    # stage 1: coarse S_c ~ n**3 (var + eps) 4**(f - t_c); s / 2**ceil(log2 n) for the mean
    lg_up = max(0, math.ceil(math.log2(n)))
    # exact truncations ride in the next product's round (protocols/fused.py): y_c's in its
    # square, s_low's alongside
    y_c_p, s_low_p = lazy(d, party, plan.t_c), lazy(s, party, lg_up)
    st: dict[int, Tensor] = {}
    (sq_c,) = square_many_lazy(
        [y_c_p], party, 0, tag="standardize.coarse", settled=st, extra=_pending(s_low_p)
    )
    assert isinstance(sq_c, Tensor)  # bits 0
    y_c, s_low = settled_value(y_c_p, st), settled_value(s_low_p, st)
    s_c = sq_c.sum(dims, keepdim=True)
    scale_c = float(n) ** 3 * 4.0 ** (f - plan.t_c)
    if party.rank == 0:
        s_c += min(round(eps * scale_c), 1 << 62)
    thresholds = [1 << (2 * j) for j in range(plan.j0, _TOP_LOG4 + 1)]
    onehot = _onehot(s_c, party, thresholds)
    ks = [plan.k(j) for j in plan.buckets]
    # stage 2: y = D / 2**k. With exact truncation one product D * 2**(K - k_j), K = max k:
    # its value y 2**K stays below 2**55 for n up to 2**20 (the selected bucket keeps y near
    # 2**13 rms), and the truncation is exact below 2**62. Local truncation fails with
    # probability |z| / 2**63, so there the high buckets start from y_c = D >> t_c and both
    # products keep z below 2**(13 + t_c) times the row's peak-to-rms ratio.
    extra = 0 if resolve_method(party) == "local" else _Y_EXTRA
    if extra:
        big_k = max(max(ks), extra + 1)
        w_sel = _select(onehot, [1 << (big_k - k) for k in ks])
        # one broadcasting Beaver product: the weight's mask is per row
        z_sum = beaver("mul", d, w_sel, party, tag="standardize.scale")
    else:
        big_k = max(plan.t_c, max(ks) - plan.t_c)
        w_lo = [1 << (big_k - k) if k <= plan.t_c else 0 for k in ks]
        w_hi = [1 << (big_k - (k - plan.t_c)) if k > plan.t_c else 0 for k in ks]
        # both products in one broadcasting Beaver product: the weights' masks are per row
        z = beaver(
            "mul",
            torch.stack([d, y_c]),
            torch.stack([_select(onehot, w_lo), _select(onehot, w_hi)]),
            party,
            tag="standardize.scale",
        )
        z_sum = z[0] + z[1]
    y_p = lazy(z_sum, party, big_k)
    # With exact truncation the outputs take y with _Y_EXTRA more bits, truncated from the
    # same z: x_hat's resolution is then 2**-20 of the row's rms, not 2**-13 (the products
    # with it stay below 2**47 for n = 768; local truncation would fail on them 2**-17 of the
    # time, so it keeps y).
    y_out: Operand = lazy(z_sum, party, big_k - extra) if extra else y_p
    # mean = (s / 2**ceil(log2 n)) * (2**ceil(log2 n) / n), the factor in (1/2, 1] at 2**-24
    g = 24
    mean_p = lazy(s_low * round(2.0 ** (lg_up + g) / n), party, g)
    # With local truncation the squares are truncated by b_sq bits when n is large, so the row
    # sum S / 2**b_sq stays near 2**36 (its local truncation to u below then fails with
    # probability about 2**-26); the exact truncation needs no such cut (|S| < 2**62).
    local = resolve_method(party) == "local"
    if weight is not None and local:
        raise ValueError(f"party {party.rank}: standardize's fused weight needs exact truncation")
    b_sq = max(0, plan.p - 34) if local else 0
    # y * weight: y is an integer, so y w is at scale f; _W_CUT bits of it go (pending, into
    # the last round) so that its product with q (below 2**21) stays below 2**(45+f-16) |w|
    fine: list[tuple[Operand, Operand]] = [(y_p, y_p)]
    if weight is not None and not weight_public:
        fine.append((y_out, weight))
    sq, *yw = mul_many_lazy(
        fine,
        party,
        [b_sq, _W_CUT + extra][: len(fine)],
        tag="standardize.fine",
        settled=st,
        # a public weight multiplies y_out locally once it is settled here
        extra=_pending(mean_p) + (_pending(y_out) if weight_public else []),
    )
    assert isinstance(sq, Tensor)  # local truncation, or bits 0: nothing pending
    mean = settled_value(mean_p, st)
    if weight is not None and weight_public:
        yw = [lazy(settled_value(y_out, st) * weight, party, _W_CUT + extra)]
    s_fine = sq.sum(dims, keepdim=True)
    # eps at the fine scale, and a floor of 2**P in the bottom bucket (saturation)
    cap = 1 << (plan.p - b_sq + 3)
    add = [min(round(eps * float(n) ** 3 * 4.0 ** (f - k) / 2.0**b_sq), cap) for k in ks]
    add[0] += 1 << (plan.p - b_sq)
    s_tot = s_fine + _select(onehot, add)  # one-hot shares times public integers: local
    # u = S / 2**P. Exact truncation: t = 2 (u - lo) / (hi - lo) - 1 straight from S, its one
    # truncation pending into the polynomial's first square (S < 2**39.6 times a 20-bit
    # factor stays below 2**62). Local truncation would fail on that 2**59 product with
    # probability 2**-4, so S is truncated to u first (2**38: probability 2**-25).
    u, u_scale = s_tot, plan.p - b_sq
    if resolve_method(party) == "local":
        (u,) = truncate_many([s_tot], [plan.p - b_sq - _U_SCALE], party)
        u_scale = _U_SCALE
    t = public_affine_lazy(
        u, party, u_scale, 2 / (_U_HI - _U_LO), -(_U_HI + _U_LO) / (_U_HI - _U_LO), _U_SCALE
    )
    gain = math.sqrt(n) / 2.0**plan.c  # in [1, 2)
    coeffs = [gain * cf for cf in fit(_rsqrt, _U_LO, _U_HI, 12, True)]
    # t = 2 (u - lo) / (hi - lo) - 1 lies in [-1, 1] (u is in [lo, hi] by the bucket choice)
    (q,) = evaluate_lazy(t, [coeffs], party, _U_SCALE, _U_SCALE, t_bound=1.0)
    xq_bits = _U_SCALE + plan.p // 2 - plan.c - f  # y q 2**(c - P/2) at scale f
    y_q = settled_value(y_out, st) if id(y_out) in st else y_out
    assert xq_bits >= 0
    pairs: list[tuple[Operand, Operand]] = []
    bits: list[int] = []
    if need_x_hat or weight is None:
        pairs.append((y_q, q))
        bits.append(xq_bits + extra)
    if weight is not None:
        # (y w 2**(f - _W_CUT)) q: _W_CUT - f more bits than y q
        pairs.append((yw[0], q))
        bits.append(xq_bits + f - _W_CUT)
    n_main = len(pairs)
    # rstd = q * 2**c * n * 2**(f - k - P/2)
    r_pairs, r_bits = _factor_pairs(
        q, onehot, [n * 2.0 ** (plan.c + f - k - plan.p // 2) for k in ks], _U_SCALE, f
    )
    pairs += r_pairs
    bits += r_bits
    if need_var:
        # var = (S / 2**P) * 2**P * 4**k / (n**3 * 4**f)
        v = lazy(s_fine, party, plan.p - b_sq - _U_SCALE)
        v_pairs, v_bits = _factor_pairs(
            v, onehot, [2.0 ** (plan.p + 2 * k - 2 * f) / n**3 for k in ks], _U_SCALE, f
        )
        pairs += v_pairs
        bits += v_bits
    outs = mul_many(pairs, party, bits, tag="standardize.out")
    x_hat = outs[0] if need_x_hat or weight is None else None
    scaled = outs[n_main - 1] if weight is not None else None
    rstd = sum(outs[n_main : n_main + len(r_pairs)], torch.zeros_like(mean))
    var = sum(outs[n_main + len(r_pairs) :], torch.zeros_like(mean)) if need_var else None
    return Standardized(x_hat=x_hat, mean=mean, rstd=rstd, var=var, scaled=scaled)


def _rsqrt(t: Tensor) -> Tensor:
    return t**-0.5
