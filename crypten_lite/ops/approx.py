"""Layer L4: ops built on the numerical approximations of ``protocols.approximations``.

exp, log, reciprocal, sqrt, rsqrt, powers, sigmoid, tanh, erf, gelu, silu, sin, cos, softmax
and log_softmax, with the backward ops torch's autograd calls, written as compositions. What a
backward pass needs is stashed or reused, so it adds products rather than approximations:

* ``sigmoid``/``tanh`` backward use the saved output (torch's own rule);
* with autograd on, ``silu`` stashes ``sigmoid(x)`` and ``gelu`` stashes ``Phi(x)`` on the
  input (for inference the one-shot ``silu``/``gelu`` protocols run instead);
* ``1/x`` and ``1/sqrt(x)`` are stashed on ``x`` (a division and its backward share them);
* ``log_softmax``'s backward needs ``exp(output)``: one ``exp``, not a second softmax.

Domains and errors are those of ``protocols.approximations`` (its module docstring has the
table); where an argument can leave ``exp``'s domain (``[-160, 8]``) it is clamped first. The
ops here add at most a few ulps of rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from crypten_lite.ops._common import find_party, wrap
from crypten_lite.ops._fixed import add_values, assign, mul_values, wrap_public
from crypten_lite.ops.reductions import sum_dim
from crypten_lite.protocols import approximations, comparison
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["approx", "div_value", "reciprocal_value", "rsqrt_value", "softmax_value"]

_SIGMOID = "approx:sigmoid(x)"
_PHI = "approx:Phi(x)"
_SOFTMAX = "approx:softmax"
_RECIP = "approx:1/x"
_RSQRT = "approx:1/sqrt(x)"


def _protocol(name: str) -> Callable[..., torch.Tensor]:
    return getattr(approximations, name)  # type: ignore[no-any-return]


def _share_f(x: MPCTensor) -> torch.Tensor:
    """``x``'s share at scale ``f``, contiguous (int64/bool secrets are shifted up)."""
    share = x._share if x.dtype == torch.float32 else x._share << x.party.frac_bits
    return share if share.is_contiguous() else share.contiguous()


def approx(name: str, x: MPCTensor, **kwargs: Any) -> MPCTensor:
    """Apply ``protocols.approximations.<name>`` to a secret (share at scale ``f``)."""
    party = x.party
    return wrap(_protocol(name)(_share_f(x), party, **kwargs), party)


def _needs_grad(x: Any) -> bool:
    """Whether autograd will run this op's backward (then stash what it needs)."""
    return bool(torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad)


def _unary(name: str, op: Any, inplace: Any | None = None) -> None:
    def forward(x: MPCTensor) -> MPCTensor:
        return approx(name, x)

    forward.__name__ = name
    forward.__doc__ = f"``{name}(x)`` by ``protocols.approximations.{name}``."
    implements(op)(forward)
    if inplace is not None:

        def forward_(x: MPCTensor) -> Any:
            return assign(x, approx(name, x))

        forward_.__name__ = f"{name}_"
        implements(inplace)(forward_)


_unary("exp", aten.exp.default, aten.exp_.default)
_unary("sin", aten.sin.default)
_unary("cos", aten.cos.default)
_unary("tanh", aten.tanh.default, aten.tanh_.default)
_unary("sigmoid", aten.sigmoid.default, aten.sigmoid_.default)
_unary("erf", aten.erf.default)


def reciprocal_value(x: MPCTensor) -> MPCTensor:
    """``1 / x`` (stashed on ``x``, so a division and its backward share one approximation)."""
    cached = x.stashed(_RECIP)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    out = approx("reciprocal", x)
    x.stash(_RECIP, out)
    return out


def div_value(x: Any, y: MPCTensor) -> MPCTensor:
    """``x / y`` for a secret ``y`` by ``protocols.approximations.div``: relative precision
    over the whole range of ``y`` (``x * (1/y)`` loses it: ``1/y`` at scale ``f`` has one ulp
    of absolute error, 0.7 % of ``1/1000``). Reuses a reciprocal already stashed on ``y``."""
    party = y.party
    if y.stashed(_RECIP) is not None:
        return mul_values(x, reciprocal_value(y), party)
    xs = (
        x
        if isinstance(x, MPCTensor)
        else wrap_public(torch.as_tensor(x, dtype=torch.float32), party)
    )
    return wrap(approximations.div(_share_f(xs), _share_f(y), party), party)


@implements(aten.reciprocal.default)
def reciprocal(x: MPCTensor) -> MPCTensor:
    return reciprocal_value(x)


@implements(aten.log.default)
def log(x: MPCTensor) -> MPCTensor:
    return approx("log", x)


def rsqrt_value(x: MPCTensor) -> MPCTensor:
    """``1 / sqrt(x)`` (stashed on ``x``)."""
    cached = x.stashed(_RSQRT)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    out = approx("inv_sqrt", x)
    x.stash(_RSQRT, out)
    return out


@implements(aten.rsqrt.default)
def rsqrt(x: MPCTensor) -> MPCTensor:
    return rsqrt_value(x)


@implements(aten.sqrt.default)
def sqrt(x: MPCTensor) -> MPCTensor:
    """``sqrt(x)`` by ``protocols.approximations.sqrt``."""
    return approx("sqrt", x)


def int_power(x: MPCTensor, k: int) -> MPCTensor:
    """``x**k`` for an integer ``k >= 0`` (``protocols.approximations.pow``: square-and-multiply,
    one round per bit of ``k``)."""
    party = x.party
    if k == 0:
        return wrap_public(torch.ones(x.shape), party, x.dtype)
    if k == 1:
        return wrap(x._share.clone(), party, dtype=x.dtype)
    if k == 2:
        return mul_values(x, x, party)
    return power_approx(x, float(k))


@implements(aten.pow.Tensor_Scalar)
def pow_scalar(x: MPCTensor, exponent: Any) -> MPCTensor:
    """``x**e`` for a public exponent: products for integers ``e >= 0``; reciprocals, square
    roots or ``exp(e log x)`` otherwise (``protocols.approximations.pow``; ``x > 0`` there)."""
    e = float(exponent)
    if e.is_integer() and 0 <= e <= 2:
        return int_power(x, int(e))
    if e == -1.0:
        return reciprocal_value(x)
    if e == -0.5:
        return rsqrt_value(x)
    if e == 0.5:
        return approx("sqrt", x)
    return power_approx(x, e)


def power_approx(x: MPCTensor, e: float) -> MPCTensor:
    """``x**e`` by ``protocols.approximations.pow``."""
    party = x.party
    return wrap(approximations.pow(_share_f(x), e, party), party)


# --------------------------------------------------------------------------- activations


@implements(aten.sigmoid_backward.default)
def sigmoid_backward(grad: Any, out: Any) -> MPCTensor:
    """``grad * out * (1 - out)`` (two products)."""
    party = find_party(grad, out)
    slope = mul_values(out, add_values(1.0, out, party, -1), party)
    return mul_values(grad, slope, party)


@implements(aten.tanh_backward.default)
def tanh_backward(grad: Any, out: Any) -> MPCTensor:
    """``grad * (1 - out**2)``."""
    party = find_party(grad, out)
    return mul_values(grad, add_values(1.0, mul_values(out, out, party), party, -1), party)


@implements(aten.silu.default)
def silu(x: MPCTensor) -> MPCTensor:
    """``x * sigmoid(x)``: ``protocols.approximations.silu`` for inference; with autograd,
    ``sigmoid(x)`` times ``x``, stashing ``sigmoid(x)`` on ``x`` for the backward."""
    party = x.party
    if not _needs_grad(x):
        return approx("silu", x)
    s = approx("sigmoid", x)
    x.stash(_SIGMOID, s)
    return mul_values(x, s, party)


@implements(aten.silu_.default)
def silu_(x: MPCTensor) -> Any:
    return assign(x, silu(x))


@implements(aten.silu_backward.default)
def silu_backward(grad: Any, x: Any) -> MPCTensor:
    """``grad * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``."""
    party = find_party(grad, x)
    s = x.stashed(_SIGMOID) if isinstance(x, MPCTensor) else None
    if s is None:
        s = approx("sigmoid", x)
    inner = add_values(1.0, mul_values(x, add_values(1.0, s, party, -1), party), party)
    return mul_values(grad, mul_values(s, inner, party), party)


def _phi(x: MPCTensor, approximate: str, party: Party) -> MPCTensor:
    """``Phi(x)``, the factor with ``gelu(x) = x * Phi(x)`` (erf form or tanh form)."""
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        cube = mul_values(mul_values(x, x, party), x, party)
        inner = add_values(mul_values(x, c, party), mul_values(cube, c * 0.044715, party), party)
        t = approx("tanh", inner)
    else:
        t = approx("erf", mul_values(x, 1.0 / math.sqrt(2.0), party))
    return mul_values(add_values(t, 1.0, party), 0.5, party)


@implements(aten.gelu.default)
def gelu(x: MPCTensor, *, approximate: str = "none") -> MPCTensor:
    """``x * Phi(x)``: ``protocols.approximations.gelu`` for inference (erf form); with
    autograd (or the tanh form), ``Phi(x)`` times ``x``, stashing ``Phi(x)`` on ``x``."""
    party = x.party
    if approximate == "none" and not _needs_grad(x):
        return approx("gelu", x)
    phi = _phi(x, approximate, party)
    x.stash(_PHI + approximate, phi)
    return mul_values(x, phi, party)


@implements(aten.gelu_backward.default)
def gelu_backward(grad: Any, x: Any, *, approximate: str = "none") -> MPCTensor:
    """``grad * (Phi(x) + x * phi(x))`` with the density ``phi(x) = exp(-x**2/2) / sqrt(2 pi)``
    (the tanh form's derivative is approximated by the same density)."""
    party = find_party(grad, x)
    phi_cdf = x.stashed(_PHI + approximate) if isinstance(x, MPCTensor) else None
    if phi_cdf is None:
        phi_cdf = _phi(x, approximate, party)
    # exp's domain ends at -160: clamp the exponent (the density is below 1.2e-7 there).
    half_sq = _clamp_low(mul_values(mul_values(x, x, party), -0.5, party), -16.0)
    density = mul_values(approx("exp", half_sq), 1.0 / math.sqrt(2 * math.pi), party)
    slope = add_values(phi_cdf, mul_values(x, density, party), party)
    return mul_values(grad, slope, party)


# --------------------------------------------------------------------------- softmax family


def _clamp_low(x: MPCTensor, low: float) -> MPCTensor:
    """``max(x, low)`` for a public ``low`` (one comparison)."""
    return wrap(comparison.clamp(_share_f(x), x.party, min=low), x.party)


def _dim(x: MPCTensor, dim: int) -> int:
    return dim % max(1, x.dim())


def softmax_value(x: MPCTensor, dim: int) -> MPCTensor:
    """``softmax(x, dim)`` by ``protocols.approximations.softmax`` (max-subtracted)."""
    party = x.party
    if x.dim() == 0:  # a softmax over one element is 1 whatever x is (torch's answer): public
        return wrap_public(torch.ones(()), party)
    return wrap(approximations.softmax(_share_f(x), party, _dim(x, dim)), party)


@implements(aten._softmax.default)
def softmax(x: MPCTensor, dim: int, half_to_float: bool = False) -> MPCTensor:
    return softmax_value(x, dim)


@implements(aten._log_softmax.default)
def log_softmax(x: MPCTensor, dim: int, half_to_float: bool = False) -> MPCTensor:
    """``log_softmax`` by ``protocols.approximations.log_softmax``."""
    party = x.party
    if x.dim() == 0:  # log of a softmax over one element: 0 whatever x is, public
        return wrap_public(torch.zeros(()), party)
    return wrap(approximations.log_softmax(_share_f(x), party, _dim(x, dim)), party)


@implements(aten._softmax_backward_data.default)
def softmax_backward(grad: Any, out: Any, dim: int, input_dtype: Any) -> MPCTensor:
    """``out * (grad - sum(grad * out, dim))``."""
    party = find_party(grad, out)
    dot = sum_dim(mul_values(grad, out, party), [dim], keepdim=True)
    return mul_values(out, add_values(grad, dot, party, -1), party)


@implements(aten._log_softmax_backward_data.default)
def log_softmax_backward(grad: Any, out: Any, dim: int, input_dtype: Any) -> MPCTensor:
    """``grad - exp(out) * sum(grad, dim)``: ``exp`` of the log-probabilities clamped at -16
    (exp's domain ends at -160; the probabilities below ``e**-16`` count as ``1.1e-7``)."""
    party = find_party(grad, out)
    sm = out.stashed(_SOFTMAX) if isinstance(out, MPCTensor) else None
    if sm is None:
        sm = approx("exp", _clamp_low(out, -16.0))
        if isinstance(out, MPCTensor):
            out.stash(_SOFTMAX, sm)
    total = grad.sum(dim, keepdim=True)
    return add_values(grad, mul_values(sm, total, party), party, -1)


@implements(aten.softmax.int)
def softmax_int(x: MPCTensor, dim: int, dtype: Any = None) -> MPCTensor:
    """``torch.softmax`` met inside other ops' implementations (user calls decompose)."""
    return softmax_value(x, dim)


@implements(aten.log_softmax.int)
def log_softmax_int(x: MPCTensor, dim: int, dtype: Any = None) -> Any:
    return log_softmax(x, dim)
