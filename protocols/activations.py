"""Layer L3: bounded activations (sigmoid, tanh, erf, GeLU, SiLU); softmax is in
:mod:`~crypten_lite.protocols.softmax`.

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

from crypten_lite.protocols.comparison import public_threshold, sign_bits
from crypten_lite.protocols.conversion import inject_masked, open_masked_bits
from crypten_lite.protocols.polynomial import (
    evaluate_lazy,
    fit,
    internal_scale,
    mul_many,
    public_affine_lazy,
)
from crypten_lite.runtime.party import Party

__all__ = ["erf", "gelu", "sigmoid", "silu", "tanh"]

Tensor = torch.Tensor
_DEGREE = 12


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


# softmax and log_softmax live in protocols/softmax.py; re-exported here for existing imports
from crypten_lite.protocols.softmax import log_softmax as log_softmax  # noqa: E402
from crypten_lite.protocols.softmax import softmax as softmax  # noqa: E402
