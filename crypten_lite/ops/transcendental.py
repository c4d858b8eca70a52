"""Layer L4: elementary functions derived from the approximations of ``ops.approx``.

Each is a short composition, so its domain and error follow from the pieces
(:mod:`crypten_lite.protocols.elementary`; ``f = 16``):

* ``log2(x) = log(x) / ln 2``, ``log10(x) = log(x) / ln 10``: ``log``'s domain (``x > 0``) and
  error scaled by ``1.44`` / ``0.43``, plus one truncation; ``log``'s rounds (8 for 2 parties).
* ``sinh``, ``cosh``: ``(exp(x) -+ exp(-x)) / 2``, both exponentials in one ``exp`` call (8
  rounds); ``exp``'s relative error; ``|x|`` up to ``exp``'s range (about 21, where ``e**x``
  leaves the fixed-point range).
* ``tan(x) = sin(x) / cos(x)``: ``sin`` and ``cos`` (8 rounds each) and a secret reciprocal (15
  rounds); intended for ``|x| < 1.4`` (``cos x > 0.17``), its error growing like ``1 / cos**2``.
* ``pow(base, x)`` with a public scalar ``base > 0``: ``exp(x ln base)`` (``exp``'s cost).
* ``pow(x, y)`` with a secret exponent: ``exp(y log x)`` for ``x > 0`` (log then exp, 16
  rounds plus one product); ``x <= 0`` is outside the domain (wrong values, as for ``log``).

Backward comes from torch's formulas (``pow``'s uses ``where`` on comparisons of the exponent).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crypten_lite.ops._common import public_of, unsupported, wrap
from crypten_lite.ops._fixed import add_values, mul_values
from crypten_lite.ops.approx import approx, reciprocal_value
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
