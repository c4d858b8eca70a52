"""Layer L4: elementary functions derived from the approximations of ``ops.approx``.

Each is a short composition, so its domain and error follow from the pieces
(:mod:`crypten_lite.protocols.elementary`; ``f = 16``):

* ``log2(x) = log(x) / ln 2``, ``log10(x) = log(x) / ln 10``: ``log``'s domain (``x > 0``) and
  error scaled by ``1.44`` / ``0.43``, plus one truncation; ``log``'s rounds (8 for 2 parties).
* ``log1p(x) = log(1 + x)`` (``x > -1``) and ``expm1(x) = exp(x) - 1``: ``log``'s / ``exp``'s
  cost; their absolute error near 0 is that of ``log`` / ``exp`` (no extra precision for tiny
  ``x``, unlike torch's, beyond the fixed point's 2**-16).
* ``sinh``, ``cosh``: ``(exp(x) -+ exp(-x)) / 2``, both exponentials in one ``exp`` call (8
  rounds); ``exp``'s relative error; ``|x|`` up to ``exp``'s range (about 21, where ``e**x``
  leaves the fixed-point range).
* ``tan(x) = sin(x) / cos(x)``: ``sin`` and ``cos`` (8 rounds each) and a secret reciprocal (15
  rounds); intended for ``|x| < 1.4`` (``cos x > 0.17``), its error growing like ``1 / cos**2``.
* ``asinh(x) = sign(x) log(|x| + sqrt(x**2 + 1))`` (odd symmetry keeps the log's argument
  ``>= 1``): one ``abs``, one square, ``sqrt``, ``log`` (about 27 rounds); ``|x| < 2**9``.
* ``acosh(x) = log(x + sqrt(x**2 - 1))`` for ``x >= 1`` (``x < 2**9``); below 1: garbage,
  as torch's NaN has no fixed-point form.
* ``atanh(x) = (log(1 + x) - log(1 - x)) / 2`` for ``|x| < 1``, both logs in one call (8
  rounds); the error grows like ``1 / (1 - |x|)`` near the ends.
* ``atan(x) = sign(x) (pi/4 + P((|x| - 1) / (|x| + 1)))``: the argument maps ``[0, inf)`` onto
  ``[-1, 1)``, where ``P`` is a degree-15 fit of ``atan`` (error ``4e-8``: atan's Chebyshev
  coefficients decay like ``(sqrt 2 - 1)**k``); one ``abs``, one reciprocal (``|x| + 1 >= 1``),
  and the polynomial (25 rounds for 2 parties); error ``~1e-4`` absolute (the reciprocal's).
* ``asin(x) = atan(x / sqrt(1 - x**2))`` (``inv_sqrt``) and ``acos = pi/2 - asin``, for
  ``|x| < 1``; the error grows near ``|x| = 1``.
* ``atan2(y, x)``: ``A = 2 atan(y / (r + |x|))`` with ``r = sqrt(x**2 + y**2)`` is
  ``atan2(y, |x|)`` (the ratio lies in ``[-1, 1]``: the fit directly, no reduction), then
  ``atan2(y, x) = A`` for ``x >= 0`` and ``sign(y) pi - A`` for ``x < 0`` (``y = 0, x < 0``
  gives ``pi``, as torch). One ``abs``, a square, ``sqrt``, a reciprocal, the fit, a comparison
  of ``y`` and two selections (40 rounds for 2 parties). Error about ``2.5e-5 (1 + |y|)``
  absolute (measured ``2.2e-3`` at ``|y| = 100``): the reciprocal's absolute error is
  multiplied by ``|y|``; ``x**2 + y**2`` must stay inside ``sqrt``'s domain (``< 2**20``).
  ``atan2(0, 0)`` is 0, as torch.
* ``pow(base, x)`` with a public scalar ``base > 0``: ``exp(x ln base)`` (``exp``'s cost).
* ``pow(x, y)`` with a secret exponent: ``exp(y log x)`` for ``x > 0`` (log then exp, 16
  rounds plus one product); ``x <= 0`` is outside the domain (wrong values, as for ``log``).

Backward comes from torch's formulas (``pow``'s uses ``where`` on comparisons of the exponent).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.ops._fixed import add_values, mul_values, ring_of
from crypten_lite.ops.approx import approx, reciprocal_value
from crypten_lite.protocols import comparison
from crypten_lite.protocols.comparison import abs_and_sign
from crypten_lite.protocols.polynomial import evaluate, fit
from crypten_lite.protocols.sharing import share_public
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []


def _log_base(x: MPCTensor, base: float) -> MPCTensor:
    return mul_values(approx("log", x), 1.0 / math.log(base), x.party)


@implements(aten.log2.default)
def log2(x: MPCTensor) -> MPCTensor:
    return _log_base(x, 2.0)


@implements(aten.log10.default)
def log10(x: MPCTensor) -> MPCTensor:
    return _log_base(x, 10.0)


@implements(aten.log1p.default)
def log1p(x: MPCTensor) -> MPCTensor:
    return approx("log", add_values(x, 1.0, x.party))


@implements(aten.expm1.default)
def expm1(x: MPCTensor) -> MPCTensor:
    return add_values(approx("exp", x), -1.0, x.party)


def _exp_pair(x: MPCTensor) -> tuple[MPCTensor, MPCTensor]:
    """``(exp(x), exp(-x))`` from one ``exp`` call on both."""
    party = x.party
    share = x._share if x.dtype == torch.float32 else x._share << party.frac_bits
    both = approx("exp", wrap(torch.stack([share, -share]).contiguous(), party))
    return wrap(both._share[0], party), wrap(both._share[1], party)


@implements(aten.sinh.default)
def sinh(x: MPCTensor) -> MPCTensor:
    up, down = _exp_pair(x)
    return mul_values(add_values(up, down, x.party, -1), 0.5, x.party)


@implements(aten.cosh.default)
def cosh(x: MPCTensor) -> MPCTensor:
    up, down = _exp_pair(x)
    return mul_values(add_values(up, down, x.party), 0.5, x.party)


@implements(aten.tan.default)
def tan(x: MPCTensor) -> MPCTensor:
    return mul_values(approx("sin", x), reciprocal_value(approx("cos", x)), x.party)


def _square(x: MPCTensor) -> MPCTensor:
    return mul_values(x, x, x.party)


@implements(aten.asinh.default)
def asinh(x: MPCTensor) -> MPCTensor:
    party = x.party
    share = x._share if x.dtype == torch.float32 else x._share << party.frac_bits
    magnitude, negative = abs_and_sign(share.contiguous(), party)
    a = wrap(magnitude, party)
    root = approx("sqrt", add_values(_square(a), 1.0, party))
    value = approx("log", add_values(a, root, party))
    # sign(x) = 1 - 2 [x < 0] (scale 0): one product without truncation
    sign = wrap(share_public(torch.ones_like(negative), party) - 2 * negative, party,
                dtype=torch.int64)  # fmt: skip
    return mul_values(value, sign, party)


@implements(aten.acosh.default)
def acosh(x: MPCTensor) -> MPCTensor:
    party = x.party
    root = approx("sqrt", add_values(_square(x), -1.0, party))
    return approx("log", add_values(x, root, party))


@implements(aten.atanh.default)
def atanh(x: MPCTensor) -> MPCTensor:
    party = x.party
    share = x._share if x.dtype == torch.float32 else x._share << party.frac_bits
    one = share_public(torch.full_like(share, 1 << party.frac_bits), party)
    logs = approx("log", wrap(torch.stack([one + share, one - share]).contiguous(), party))
    diff = wrap(logs._share[0] - logs._share[1], party)
    return mul_values(diff, 0.5, party)


def _atan_poly(v: torch.Tensor, party: Any) -> torch.Tensor:
    """``[atan(v)]`` for ``v`` in ``[-1, 1]`` at scale ``f``: a degree-15 fit (4 rounds)."""
    f = party.frac_bits
    (y,) = evaluate(v, [fit(torch.atan, -1.0, 1.0, 15)], party, f, f)
    return y


def atan_value(x: MPCTensor) -> MPCTensor:
    """``atan(x)`` for any ``x`` (see the module docstring)."""
    party = x.party
    share = x._share if x.dtype == torch.float32 else x._share << party.frac_bits
    magnitude, negative = abs_and_sign(share.contiguous(), party)
    a = wrap(magnitude, party)
    # (a - 1) / (a + 1) written as 1 - 2 / (a + 1): the reciprocal's absolute error is then
    # doubled, not multiplied by a (up to 2**9 and more)
    v = add_values(
        1.0, mul_values(reciprocal_value(add_values(a, 1.0, party)), 2, party), party, -1
    )
    inner = wrap(_atan_poly(v._share, party), party)
    value = add_values(inner, math.pi / 4, party)
    sign = wrap(share_public(torch.ones_like(negative), party) - 2 * negative, party,
                dtype=torch.int64)  # fmt: skip
    return mul_values(value, sign, party)


@implements(aten.atan.default)
def atan(x: MPCTensor) -> MPCTensor:
    return atan_value(x)


def _asin(x: MPCTensor) -> MPCTensor:
    party = x.party
    ratio = mul_values(x, approx("inv_sqrt", add_values(1.0, _square(x), party, -1)), party)
    return atan_value(ratio)


@implements(aten.asin.default)
def asin(x: MPCTensor) -> MPCTensor:
    return _asin(x)


@implements(aten.acos.default)
def acos(x: MPCTensor) -> MPCTensor:
    return add_values(math.pi / 2, _asin(x), x.party, -1)


@implements(aten.atan2.default)
def atan2(y: Any, x: Any) -> MPCTensor:
    party = find_party(y, x)
    f = party.frac_bits
    xs, ys = ring_of(x, party, f), ring_of(y, party, f)
    xs, ys = torch.broadcast_tensors(xs, ys)  # type: ignore[no-untyped-call]
    magnitude, x_negative = abs_and_sign(xs.contiguous(), party)
    ax, yv = wrap(magnitude, party), wrap(ys.contiguous(), party)
    r = approx("sqrt", add_values(_square(ax), _square(yv), party))
    ratio = mul_values(yv, reciprocal_value(add_values(r, ax, party)), party)
    half = wrap(_atan_poly(ratio._share, party), party)
    a = mul_values(half, 2, party)  # atan2(y, |x|)
    y_negative = comparison.ltz(ys.contiguous(), party)
    sign_pi = share_public(torch.full_like(ys, round(math.pi * (1 << f))), party)
    sign_pi = sign_pi - 2 * y_negative * round(math.pi * (1 << f))
    other = add_values(wrap(sign_pi, party), a, party, -1)  # sign(y) pi - A, for x < 0
    mask = wrap(x_negative, party, dtype=torch.int64)
    return add_values(a, mul_values(mask, add_values(other, a, party, -1), party), party)


@implements(aten.pow.Scalar)
def pow_base(base: Any, exponent: MPCTensor) -> MPCTensor:
    """``base ** x`` for a public scalar ``base > 0``: ``exp(x ln base)``."""
    b = float(base)
    if b <= 0:
        raise unsupported(
            f"pow with a public base {b} <= 0 and an encrypted exponent", exponent.party
        )
    return approx("exp", mul_values(exponent, math.log(b), exponent.party))


@implements(aten.pow.Tensor_Tensor)
def pow_tensor(x: Any, exponent: Any) -> MPCTensor:
    """``x ** y`` elementwise with an encrypted exponent (or base): ``exp(y log x)``, ``x > 0``."""
    base = public_of(x)
    if base is not None:  # public base tensor: its logarithm is public, one product then exp
        return approx(
            "exp", mul_values(exponent, torch.log(base.to(torch.float64)), exponent.party)
        )
    return approx("exp", mul_values(exponent, approx("log", x), x.party))
