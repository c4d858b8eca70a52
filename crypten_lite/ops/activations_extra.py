"""Layer L4: the remaining activations — hardsigmoid, hardswish, ELU (CELU, SELU), softplus, mish.

All are compositions of comparisons, products and the approximations of
``protocols.approximations``, with the backward ops torch's autograd calls. Several comparisons
of one value are made in *one* call on a stacked tensor (same rounds as a single comparison),
and the resulting 0/1 masks (scale 0) multiply values without truncation. What a backward pass
needs is stashed on the input, so it costs products rather than new comparisons.

Errors (``f = 16``, 2 and 3 parties, measured on ``[-30, 30]``; ``ulp = 2**-16``) and forward
cost (rounds, bytes sent per element and party; 2 parties / 3 parties):

===========  ============================================  ==================  =======  ========
op           formula                                       max abs error       rounds   bytes
===========  ============================================  ==================  =======  ========
hardsigmoid  ``clamp(x + 3, 0, 6) / 6`` (one compare)      2 ulp               5 / 6    43 / 102
hardswish    ``in * x (x + 3) / 6 + [x > 3] x``            ``2 ulp (1+|x|)``   6 / 8    75 / 182
elu          ``relu(x) + alpha (exp(z) - 1)``,             ``1e-4 alpha``      13 / 23  131 / 422
             ``z = clamp(x, -16, 0)``
softplus     ``(relu(y) + log(1 + exp(-min(|y|, 16))))     ``1.5e-4 / beta``   21 / 40  245 / 826
             / beta``, ``y = beta x``
mish         ``x tanh(softplus(x))`` in closed form from   ``1e-4 (1+|x|)``    24 / 48  351 /
             ``u = exp(-min(|x|, 16))``; 0 below -16       for ``|x| <= 16``            1119
===========  ============================================  ==================  =======  ========

(For scale: ``sigmoid`` costs 9 / 19 rounds, 130 / 457 bytes.) The backward ops reuse the
stashed masks and ``exp``/``tanh`` terms: hardsigmoid and hardswish one or two products, ELU
two, softplus one sigmoid and a product, mish one sigmoid and four products.

Every ``exp`` here has an argument in ``[-16, 0]`` (never an unbounded one), every ``log`` an
argument in ``[1, 2]`` and every reciprocal one in ``[1, 5]``, so the approximations run on
their accurate domains with their cheapest (hinted) forms. Softplus ignores torch's
``threshold`` switch to the identity: past it the formula equals ``x`` within ``1.1e-7 / beta``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.ops._common import find_party
from crypten_lite.ops._fixed import add_values, assign, div_values, mul_values
from crypten_lite.ops.approx import approx
from crypten_lite.ops.nonlinear import compare
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["abs_split", "softplus_value"]

_HSIG_IN = "hardsigmoid:inside"
_HSWISH = "hardswish:masks"
_ELU = "elu:mask,exp"
_MISH = "mish:tanh_softplus,masked_x"
_BOUND = 16.0


def _signs(op: str, values: Sequence[Any]) -> list[Any]:
    """``[v op 0]`` for each of several secrets of one shape, in one comparison call."""
    bits = compare(op, torch.stack(list(values)), 0.0)
    return list(bits.unbind(0))


def _stash(x: Any, key: str, value: Any) -> None:
    if isinstance(x, MPCTensor):
        x.stash(key, value)


def _stashed(x: Any, key: str) -> Any:
    return x.stashed(key) if isinstance(x, MPCTensor) else None


# --------------------------------------------------------------------------- hard sigmoid / swish


def _hardsigmoid_inside(x: MPCTensor) -> tuple[MPCTensor, MPCTensor]:
    """``([-3 < x < 3], [x >= 3])`` (one comparison call on ``x + 3`` and ``3 - x``)."""
    party = x.party
    gt_lo, lt_hi = _signs("gt", [add_values(x, 3.0, party), add_values(3.0, x, party, -1)])
    # at least one of [x > -3], [x < 3] holds, so their AND is their sum minus one
    inside = add_values(add_values(gt_lo, lt_hi, party), 1, party, -1)
    above = add_values(1, lt_hi, party, -1)
    return inside, above


def _hardsigmoid(x: MPCTensor) -> MPCTensor:
    """``inside * (x + 3) / 6 + above``: one comparison, one mask product, one truncation."""
    party = x.party
    inside, above = _hardsigmoid_inside(x)
    _stash(x, _HSIG_IN, inside)
    body = mul_values(inside, add_values(x, 3.0, party), party)
    return add_values(div_values(body, 6, party), above, party)


@implements(aten.hardsigmoid.default)
def hardsigmoid(x: MPCTensor) -> MPCTensor:
    """``relu6(x + 3) / 6``; the ``[-3 < x < 3]`` mask is stashed for the backward."""
    return _hardsigmoid(x)


@implements(aten.hardsigmoid_.default)
def hardsigmoid_(x: MPCTensor) -> Any:
    return assign(x, _hardsigmoid(x))


@implements(aten.hardsigmoid_backward.default)
def hardsigmoid_backward(grad: Any, x: Any) -> MPCTensor:
    """``grad / 6`` where ``-3 < x < 3``, else 0 (one product with the stashed mask)."""
    party = find_party(grad, x)
    inside = _stashed(x, _HSIG_IN)
    if inside is None:
        inside = _hardsigmoid_inside(x)[0]
    return div_values(mul_values(grad, inside, party), 6, party)


def _hardswish_masks(x: MPCTensor) -> tuple[MPCTensor, MPCTensor]:
    """``([-3 <= x <= 3], [x > 3])``, torch's boundaries for hardswish and its backward."""
    party = x.party
    ge_lo, le_hi = _signs("ge", [add_values(x, 3.0, party), add_values(3.0, x, party, -1)])
    inside = add_values(add_values(ge_lo, le_hi, party), 1, party, -1)
    return inside, add_values(1, le_hi, party, -1)


def _hardswish(x: MPCTensor) -> MPCTensor:
    """``inside * x (x + 3) / 6 + above * x``: one comparison, one product for the quadratic,
    one for both masks (stacked)."""
    party = x.party
    inside, above = _hardswish_masks(x)
    _stash(x, _HSWISH, (inside, above))
    quad = div_values(mul_values(x, add_values(x, 3.0, party), party), 6, party)
    both = mul_values(torch.stack([inside, above]), torch.stack([quad, x]), party)
    return add_values(both[0], both[1], party)


@implements(aten.hardswish.default)
def hardswish(x: MPCTensor) -> MPCTensor:
    """``x * relu6(x + 3) / 6`` (see :func:`_hardswish`)."""
    return _hardswish(x)


@implements(aten.hardswish_.default)
def hardswish_(x: MPCTensor) -> Any:
    return assign(x, _hardswish(x))


@implements(aten.hardswish_backward.default)
def hardswish_backward(grad: Any, x: Any) -> MPCTensor:
    """``grad * (inside * (x / 3 + 1/2) + above)`` (torch: 0 below -3, 1 above 3)."""
    party = find_party(grad, x)
    masks = _stashed(x, _HSWISH)
    inside, above = masks if masks is not None else _hardswish_masks(x)
    slope = add_values(div_values(x, 3, party), 0.5, party)
    factor = add_values(mul_values(inside, slope, party), above, party)
    return mul_values(grad, factor, party)


# --------------------------------------------------------------------------- ELU family


def _elu_parts(x: MPCTensor, input_scale: float) -> tuple[Any, Any, Any]:
    """``(m, m * x, exp(z))`` with ``m = [x > 0]`` and ``z = clamp(input_scale * x, -16, 0)``.

    One comparison call gives ``m = [x > 0]`` and ``k = [input_scale * x > -16]``; as ``m``
    implies ``k``, ``z = (k - m) * input_scale * x - 16 (1 - k)`` and ``m * x`` come from one
    stacked product with scale-0 masks (no truncation), then one ``exp`` on ``[-16, 0]``.
    """
    party = x.party
    xs = x if input_scale == 1.0 else mul_values(x, input_scale, party)
    m, k = _signs("gt", [x, add_values(xs, _BOUND, party)])
    prods = mul_values(torch.stack([m, add_values(k, m, party, -1)]), torch.stack([x, xs]), party)
    z = add_values(prods[1], mul_values(add_values(1, k, party, -1), -_BOUND, party), party)
    return m, prods[0], approx("exp", z)


def _elu(x: MPCTensor, alpha: float, scale: float, input_scale: float) -> MPCTensor:
    """``scale * (relu(x) + alpha * (exp(z) - 1))``; for ``x > 0``, ``z = 0`` and the second
    term vanishes up to exp's error at 0."""
    party = x.party
    m, relu_x, e = _elu_parts(x, input_scale)
    _stash(x, _ELU, (m, e))
    neg = mul_values(add_values(e, 1.0, party, -1), alpha, party)
    out = add_values(relu_x, neg, party)
    return out if scale == 1.0 else mul_values(out, scale, party)


@implements(aten.elu.default)
def elu(x: MPCTensor, alpha: Any = 1.0, scale: Any = 1.0, input_scale: Any = 1.0) -> MPCTensor:
    """ELU, and CELU / SELU (torch calls ``elu`` with ``scale``/``input_scale`` for them)."""
    return _elu(x, float(alpha), float(scale), float(input_scale))


@implements(aten.elu_.default)
def elu_(x: MPCTensor, alpha: Any = 1.0, scale: Any = 1.0, input_scale: Any = 1.0) -> Any:
    return assign(x, _elu(x, float(alpha), float(scale), float(input_scale)))


@implements(aten.elu_backward.default)
def elu_backward(
    grad: Any,
    alpha: Any,
    scale: Any,
    input_scale: Any,
    is_result: bool,
    self_or_result: Any,
) -> MPCTensor:
    """``grad * scale`` where ``x > 0``, else ``grad * scale * alpha * input_scale * exp(z)``.

    From the input: the stashed mask and ``exp(z)`` (two products). From the result (in-place
    ELU): ``exp(z) = y / (scale alpha) + 1`` where ``y <= 0``, so only the sign of ``y`` is
    compared.
    """
    party = find_party(grad, self_or_result)
    a, s, si = float(alpha), float(scale), float(input_scale)
    y = self_or_result
    if is_result:
        m = compare("gt", y, 0.0)
        e = add_values(mul_values(y, 1.0 / (s * a), party), 1.0, party)
    else:
        parts = _stashed(y, _ELU)
        if parts is None:
            m, _, e = _elu_parts(y, si)
        else:
            m, e = parts
    # m * s + (1 - m) * s a si e  =  s a si e + m (s - s a si e)
    neg_slope = mul_values(e, s * a * si, party)
    factor = add_values(neg_slope, mul_values(m, add_values(s, neg_slope, party, -1), party), party)
    return mul_values(grad, factor, party)


# --------------------------------------------------------------------------- softplus, mish


def abs_split(y: MPCTensor, bound: float) -> tuple[Any, Any, Any, Any]:
    """``(m, relu(y), min(|y|, bound), [y < -bound])`` with ``m = [y > 0]``.

    One comparison call on ``(y, y - T, -y - T)`` gives ``m``, ``hi = [y > T]`` and
    ``lo = [y < -T]``; one stacked product of the masks with ``y`` (scale 0, no truncation)
    gives ``m y``, ``hi y``, ``lo y``. Then ``|y| = 2 m y - y`` and, clamping at ``T``,
    ``min(|y|, T) = |y| - hi (y - T) + lo (y + T)``.
    """
    party = y.party
    m, hi, lo = _signs(
        "gt", [y, add_values(y, -bound, party), add_values(mul_values(y, -1, party), -bound, party)]
    )
    my, hy, ly = mul_values(torch.stack([m, hi, lo]), y.unsqueeze(0), party).unbind(0)
    abs_y = add_values(mul_values(my, 2, party), y, party, -1)
    clipped = add_values(add_values(abs_y, hy, party, -1), ly, party)
    clipped = add_values(clipped, mul_values(add_values(hi, lo, party), bound, party), party)
    return m, my, clipped, lo


def softplus_value(x: MPCTensor, beta: float = 1.0) -> MPCTensor:
    """``(relu(y) + log(1 + exp(-min(|y|, 16)))) / beta`` with ``y = beta x``.

    ``log(1 + exp(-|y|))`` is below ``1.2e-7`` once ``|y| > 16``, so the clamp costs nothing
    measurable, keeps ``exp`` on ``[-16, 0]`` and ``log`` on ``[1, 2]`` (one bucket).
    Cost: one comparison, one product, ``exp`` (8 rounds), ``log`` with a hint.
    """
    party = x.party
    y = x if beta == 1.0 else mul_values(x, beta, party)
    _, relu_y, a, _ = abs_split(y, _BOUND)
    e = approx("exp", mul_values(a, -1, party))
    tail = approx("log", add_values(e, 1.0, party), lo=1.0, hi=2.0)
    out = add_values(relu_y, tail, party)
    return out if beta == 1.0 else mul_values(out, 1.0 / beta, party)


@implements(aten.softplus.default)
def softplus(x: MPCTensor, beta: Any = 1.0, threshold: Any = 20.0) -> MPCTensor:
    """``log(1 + exp(beta x)) / beta`` in the bounded form of :func:`softplus_value`."""
    return softplus_value(x, float(beta))


@implements(aten.softplus_backward.default)
def softplus_backward(grad: Any, x: Any, beta: Any, threshold: Any) -> MPCTensor:
    """``grad * sigmoid(beta x)`` (sigmoid is accurate for every ``x``)."""
    party = find_party(grad, x)
    b = float(beta)
    y = x if b == 1.0 else mul_values(x, b, party)
    return mul_values(grad, approx("sigmoid", y), party)


def _tanh_softplus(x: MPCTensor) -> tuple[MPCTensor, MPCTensor]:
    """``(tanh(softplus(x)), x masked to 0 below -16)``.

    With ``u = exp(-|x|)`` (clamped: ``|x| <= 16``), ``e**sp = 1 + e**x`` gives
    ``tanh(sp) = ((1 + e**x)**2 - 1) / ((1 + e**x)**2 + 1)``:

    * ``x >= 0`` (``e**x = 1/u``): ``(1 + 2u) / (1 + 2u + 2u**2)``;
    * ``x < 0`` (``e**x = u``): ``(u**2 + 2u) / (u**2 + 2u + 2)``.

    With ``w = m (1 - u**2)``: numerator ``u**2 + 2u + w``, denominator ``u**2 + 2u + 2 - w``
    in ``[1, 5]``, so one hinted reciprocal. Below ``-16``, ``|mish(x)| < 2e-6``: ``x`` is
    masked to 0 there (a fixed-point ``e**x`` would otherwise err by ``|x|`` ulps).
    """
    party = x.party
    m, _, a, lo = abs_split(x, _BOUND)
    u = approx("exp", mul_values(a, -1, party))
    u2 = mul_values(u, u, party)
    w_and_x = mul_values(
        torch.stack([m, lo]), torch.stack([add_values(1.0, u2, party, -1), x]), party
    )
    w, lo_x = w_and_x[0], w_and_x[1]
    base = add_values(u2, mul_values(u, 2, party), party)
    num = add_values(base, w, party)
    den = add_values(add_values(base, 2.0, party), w, party, -1)
    recip = approx("reciprocal", den, positive=True, lo=1.0, hi=5.0)
    return mul_values(num, recip, party), add_values(x, lo_x, party, -1)


def _mish(x: MPCTensor) -> MPCTensor:
    party = x.party
    t, xm = _tanh_softplus(x)
    _stash(x, _MISH, (t, xm))
    return mul_values(xm, t, party)


@implements(aten.mish.default)
def mish(x: MPCTensor) -> MPCTensor:
    """``x * tanh(softplus(x))`` (see :func:`_tanh_softplus`; no tanh or log approximation)."""
    return _mish(x)


@implements(aten.mish_.default)
def mish_(x: MPCTensor) -> Any:
    return assign(x, _mish(x))


@implements(aten.mish_backward.default)
def mish_backward(grad: Any, x: Any) -> MPCTensor:
    """``grad * (t + x sigmoid(x) (1 - t**2))``, ``t = tanh(softplus(x))`` (stashed), with
    ``x`` masked to 0 below -16 as in the forward pass."""
    party = find_party(grad, x)
    parts = _stashed(x, _MISH)
    t, xm = parts if parts is not None else _tanh_softplus(x)
    sig = approx("sigmoid", x)
    one_minus_t2 = add_values(1.0, mul_values(t, t, party), party, -1)
    slope = add_values(t, mul_values(mul_values(xm, sig, party), one_minus_t2, party), party)
    return mul_values(grad, slope, party)


@implements(aten.celu.default)
def celu(x: MPCTensor, alpha: Any = 1.0) -> MPCTensor:
    """``CELU = ELU(alpha, input_scale = 1 / alpha)`` (torch's backward is ``elu_backward``)."""
    return _elu(x, float(alpha), 1.0, 1.0 / float(alpha))


@implements(aten.celu_.default)
def celu_(x: MPCTensor, alpha: Any = 1.0) -> Any:
    return assign(x, celu(x, alpha))
