"""Layer L4: comparisons and the ops built on them — ReLU family, abs/sign, clamp, max/min.

Comparison results are secret 0/1 ring integers (logical dtype ``bool``, no fractional bits),
so masking a value with them is one Beaver product without truncation. By-products autograd
needs are stashed (:meth:`MPCTensor.stash`): ReLU keeps its ``[x > 0]`` mask on its output and
its input, so ``threshold_backward`` is one product and no comparison; ``abs`` keeps the sign
for ``sgn``.
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.ops._fixed import (
    add_values,
    assign,
    mul_values,
    out_frac,
    ring_of,
    where_values,
    wrap_public,
)
from crypten_lite.protocols import comparison
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["compare", "positive_mask", "relu_value"]

_GT0 = "mask:x>0"
_SIGN = "sign"


def _bool(share: torch.Tensor, party: Party) -> MPCTensor:
    return wrap(share, party, dtype=torch.bool)


def _broadcast_share(x: MPCTensor, shape: torch.Size) -> torch.Tensor:
    s = x._share
    return s if s.shape == shape else s.expand(shape).contiguous()


_FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


def compare(op: str, x: Any, y: Any) -> MPCTensor:
    """``x <op> y`` elementwise (``op`` in lt, le, gt, ge, eq, ne) as a secret 0/1 tensor."""
    party = find_party(x, y)
    px, py = public_of(x), public_of(y)
    if px is not None and py is not None:
        return wrap_public(getattr(torch, op)(px, py), party, torch.bool)
    if px is not None:  # public <op> secret  ==  secret <flipped op> public
        return compare(_FLIP[op], y, x)
    assert isinstance(x, MPCTensor)
    if py is not None and py.is_floating_point() and not bool(torch.isfinite(py).all()):
        return _compare_nonfinite(op, x, py)
    if py is not None:
        shape = torch.broadcast_shapes(x.shape, py.shape)  # type: ignore[no-untyped-call]
        fn = getattr(comparison, f"{op}_public")
        share = fn(_broadcast_share(x, shape), py, party, frac_bits=x.frac_bits)
        return _bool(share, party)
    frac = max(x.frac_bits, y.frac_bits)
    shape = torch.broadcast_shapes(x.shape, y.shape)  # type: ignore[no-untyped-call]
    rx = ring_of(x, party, frac).expand(shape)
    ry = ring_of(y, party, frac).expand(shape)
    return _bool(getattr(comparison, op)(rx.contiguous(), ry.contiguous(), party), party)


def _compare_nonfinite(op: str, x: MPCTensor, py: torch.Tensor) -> MPCTensor:
    """``x <op> py`` for a public ``py`` with infinities or NaNs (``isinf`` is ``|x| == inf``).

    A fixed-point value is always finite, and every finite value compares the same way with
    ``inf``, ``-inf`` or ``NaN`` (as 0 does), so those entries have a **public** result; the
    finite entries are compared securely.
    """
    party = x.party
    shape = torch.broadcast_shapes(x.shape, py.shape)  # type: ignore[no-untyped-call]
    finite = torch.isfinite(py).expand(shape)
    known = getattr(torch, op)(torch.zeros(shape), py).expand(shape)
    if not bool(finite.any()):
        return wrap_public(known.contiguous(), party, torch.bool)
    secure = compare(op, x, torch.where(torch.isfinite(py), py, 0.0))
    share = torch.where(finite, ring_of(secure, party, 0), ring_of(known.long(), party, 0))
    return _bool(share, party)


def _register_compare(op: str) -> None:
    packet = getattr(aten, op)

    def cmp(x: Any, y: Any) -> MPCTensor:
        return compare(op, x, y)

    cmp.__name__ = op
    cmp.__doc__ = f"``x {op} y`` as secret 0/1 (4 rounds, ~13 bytes per element and peer)."
    implements(packet.Tensor, packet.Scalar)(cmp)


for _op in ("lt", "le", "gt", "ge", "eq", "ne"):
    _register_compare(_op)


@implements(aten.logical_not.default, aten.bitwise_not.default)
def logical_not(x: MPCTensor) -> MPCTensor:
    """``1 - x`` for a 0/1 secret (``~mask`` of a comparison result)."""
    party = x.party
    if x.dtype == torch.float32:
        return compare("eq", x, 0.0)
    if x.dtype != torch.bool:
        raise unsupported("bitwise NOT of an encrypted integer tensor", party)
    return _bool(ring_of(torch.tensor(1), party, 0) - ring_of(x, party, 0), party)


@implements(aten.logical_and.default, aten.bitwise_and.Tensor)
def logical_and(x: Any, y: Any) -> MPCTensor:
    """AND of two 0/1 secrets: their product (one Beaver round, no truncation)."""
    party = find_party(x, y)
    out = mul_values(_as_bit(x, party), _as_bit(y, party), party)
    return _bool(out._share, party)


@implements(aten.logical_or.default, aten.bitwise_or.Tensor)
def logical_or(x: Any, y: Any) -> MPCTensor:
    """``a + b - a*b`` for 0/1 secrets."""
    party = find_party(x, y)
    a, b = _as_bit(x, party), _as_bit(y, party)
    both = mul_values(a, b, party)
    return _bool(ring_of(a, party, 0) + ring_of(b, party, 0) - both._share, party)


def _as_bit(x: Any, party: Party) -> Any:
    if isinstance(x, MPCTensor) and x.dtype == torch.float32:
        raise unsupported("logical ops take comparison results (bool), not float values", party)
    if isinstance(x, torch.Tensor) and not isinstance(x, MPCTensor):
        return x.to(torch.int64)
    return x


# --------------------------------------------------------------------------- ReLU family


def positive_mask(x: MPCTensor) -> MPCTensor:
    """``[x > 0]`` (secret 0/1), reusing a mask stashed by ReLU when there is one."""
    mask = x.stashed(_GT0)
    if mask is not None:
        return mask  # type: ignore[no-any-return]
    return compare("gt", x, 0.0 if x.dtype == torch.float32 else 0)


def relu_value(x: MPCTensor) -> MPCTensor:
    """``max(x, 0)``: one comparison that also yields the ``[x > 0]`` mask (stashed)."""
    party = x.party
    out, mask = comparison.relu(x._share, party)
    result = wrap(out, party, dtype=x.dtype)
    m = _bool(mask, party)
    result.stash(_GT0, m)
    x.stash(_GT0, m)
    return result


@implements(aten.relu.default)
def relu(x: MPCTensor) -> MPCTensor:
    return relu_value(x)


@implements(aten.relu_.default)
def relu_(x: MPCTensor) -> Any:
    return assign(x, relu_value(x))


def _mask_grad(grad: Any, mask: MPCTensor, party: Party) -> MPCTensor:
    return mul_values(grad, mask, party)


@implements(aten.threshold_backward.default)
def threshold_backward(grad: Any, x: Any, threshold: Any) -> MPCTensor:
    """``grad * [x > threshold]``; for ReLU the mask is stashed, so this is one product."""
    party = find_party(grad, x)
    if isinstance(x, MPCTensor) and float(threshold) == 0.0:
        mask = positive_mask(x)
    else:
        mask = compare("gt", x, threshold)
    return _mask_grad(grad, mask, party)


@implements(aten.threshold.default)
def threshold(x: MPCTensor, threshold: Any, value: Any) -> MPCTensor:
    """``x if x > threshold else value``."""
    mask = compare("gt", x, threshold)
    return where_values(mask, x, value)


def _leaky(x: MPCTensor, slope: float) -> MPCTensor:
    party = x.party
    r = relu_value(x)
    # leaky(x) = slope * x + (1 - slope) * relu(x)
    return add_values(mul_values(x, slope, party), mul_values(r, 1.0 - slope, party), party)


@implements(aten.leaky_relu.default)
def leaky_relu(x: MPCTensor, negative_slope: Any = 0.01) -> MPCTensor:
    return _leaky(x, float(negative_slope))


@implements(aten.leaky_relu_.default)
def leaky_relu_(x: MPCTensor, negative_slope: Any = 0.01) -> Any:
    return assign(x, _leaky(x, float(negative_slope)))


@implements(aten.leaky_relu_backward.default)
def leaky_relu_backward(grad: Any, x: Any, negative_slope: Any, self_is_result: bool) -> MPCTensor:
    """``grad * (slope + (1 - slope) * [x > 0])`` (the mask stashed by the forward pass)."""
    party = find_party(grad, x)
    slope = float(negative_slope)
    mask = positive_mask(x)
    factor = add_values(mul_values(mask, 1.0 - slope, party), slope, party)
    return mul_values(grad, factor, party)


@implements(aten.hardtanh.default)
def hardtanh(x: MPCTensor, min_val: Any = -1.0, max_val: Any = 1.0) -> Any:
    return clamp(x, min_val, max_val)


@implements(aten.hardtanh_backward.default)
def hardtanh_backward(grad: Any, x: Any, min_val: Any, max_val: Any) -> MPCTensor:
    party = find_party(grad, x)
    inside = logical_and(compare("gt", x, min_val), compare("lt", x, max_val))
    return mul_values(grad, inside, party)


# --------------------------------------------------------------------------- abs, sign, clamp


def _abs(x: MPCTensor) -> MPCTensor:
    party = x.party
    out, neg = comparison.abs_and_sign(x._share, party)
    # sign = 1 - 2 [x < 0] (torch's sgn is 0 at 0; the difference only matters at x == 0)
    x.stash(_SIGN, wrap(ring_of(torch.tensor(1), party, 0) - 2 * neg, party, dtype=torch.int64))
    return wrap(out, party, dtype=x.dtype)


@implements(aten.abs.default)
def abs_(x: MPCTensor) -> MPCTensor:
    """``|x|`` in one comparison; the sign is stashed for the backward's ``sgn``."""
    return _abs(x)


@implements(aten.sgn.default, aten.sign.default)
def sign(x: MPCTensor) -> MPCTensor:
    """``sign(x)`` in {-1, 0, 1} (the stash of ``abs`` when there is one: then 0 maps to 1)."""
    stashed = x.stashed(_SIGN)
    party = x.party
    share = stashed._share if stashed is not None else comparison.sign(x._share, party)
    return wrap(share << out_frac(x.dtype, party), party, dtype=x.dtype)


def _bound(value: Any) -> Any:
    if value is None:
        return None
    pub = public_of(value)
    return pub if pub is not None else value


@implements(aten.clamp.default, aten.clamp.Tensor)
def clamp(x: MPCTensor, min: Any = None, max: Any = None) -> MPCTensor:  # noqa: A002
    """``clamp(x, min, max)`` with public bounds: one comparison against both."""
    party = x.party
    lo, hi = _bound(min), _bound(max)
    if isinstance(lo, MPCTensor) or isinstance(hi, MPCTensor):
        out = x
        if lo is not None:
            out = maximum(out, lo)
        if hi is not None:
            out = minimum(out, hi)
        return out
    share = comparison.clamp(x._share, party, lo, hi, frac_bits=x.frac_bits)
    return wrap(share, party, dtype=x.dtype)


@implements(aten.clamp_min.default, aten.clamp_min.Tensor)
def clamp_min(x: MPCTensor, min: Any) -> Any:  # noqa: A002
    return clamp(x, min, None)


@implements(aten.clamp_max.default, aten.clamp_max.Tensor)
def clamp_max(x: MPCTensor, max: Any) -> Any:  # noqa: A002
    return clamp(x, None, max)


@implements(aten.clamp_.default, aten.clamp_.Tensor)
def clamp_(x: MPCTensor, min: Any = None, max: Any = None) -> Any:  # noqa: A002
    return assign(x, clamp(x, min, max))


@implements(aten.clamp_min_.default, aten.clamp_min_.Tensor)
def clamp_min_(x: MPCTensor, min: Any) -> Any:  # noqa: A002
    return assign(x, clamp(x, min, None))


@implements(aten.clamp_max_.default, aten.clamp_max_.Tensor)
def clamp_max_(x: MPCTensor, max: Any) -> Any:  # noqa: A002
    return assign(x, clamp(x, None, max))


@implements(aten.maximum.default)
def maximum(x: Any, y: Any) -> MPCTensor:
    """Elementwise max: ``y + relu(x - y)`` (one comparison)."""
    party = find_party(x, y)
    diff = add_values(x, y, party, -1)
    return add_values(y, relu_value(_materialise(diff, party)), party)


@implements(aten.minimum.default)
def minimum(x: Any, y: Any) -> MPCTensor:
    """Elementwise min: ``x - relu(x - y)``."""
    party = find_party(x, y)
    diff = add_values(x, y, party, -1)
    return add_values(x, relu_value(_materialise(diff, party)), party, -1)


def _materialise(x: MPCTensor, party: Party) -> MPCTensor:
    if x._share.is_contiguous():
        return x
    return wrap(x._share.contiguous(), party, dtype=x.dtype)


@implements(aten.logical_and_.default, aten.bitwise_and_.Tensor)
def logical_and_(x: MPCTensor, y: Any) -> Any:
    return assign(x, logical_and(x, y))


@implements(aten.logical_or_.default, aten.bitwise_or_.Tensor)
def logical_or_(x: MPCTensor, y: Any) -> Any:
    return assign(x, logical_or(x, y))


@implements(aten.logical_xor.default)
def logical_xor(x: Any, y: Any) -> MPCTensor:
    """``a + b - 2ab`` for 0/1 secrets (one Beaver round, no truncation)."""
    party = find_party(x, y)
    a, b = _as_bit(x, party), _as_bit(y, party)
    both = mul_values(a, b, party)
    return _bool(ring_of(a, party, 0) + ring_of(b, party, 0) - 2 * both._share, party)
