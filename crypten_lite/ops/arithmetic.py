"""Layer L4: elementwise arithmetic — add, sub, mul, div, fused multiply-adds, lerp, where.

Sums are local; products are local with a public operand (one truncation for a real one) and one
Beaver round between two secrets; division by a public value is one truncation, by a secret a
reciprocal (``ops.nonlinear``) and a product. In-place variants compute the same value and write
it into the target's share buffer (:func:`~crypten_lite.ops._fixed.assign`), so
``torch.optim`` updates encrypted parameters in place.
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of
from crypten_lite.ops._fixed import (
    add_values,
    assign,
    div_values,
    mul_values,
    neg_value,
    where_values,
)
from crypten_lite.ops.approx import div_value, reciprocal_value
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["divide"]


@implements(aten.add.Tensor, aten.add.Scalar)
def add(x: Any, y: Any, *, alpha: Any = 1) -> MPCTensor:
    return add_values(x, y, find_party(x, y), alpha)


@implements(aten.add_.Tensor, aten.add_.Scalar)
def add_(x: Any, y: Any, *, alpha: Any = 1) -> Any:
    return assign(x, add_values(x, y, find_party(x, y), alpha))


@implements(aten.sub.Tensor, aten.sub.Scalar)
def sub(x: Any, y: Any, *, alpha: Any = 1) -> MPCTensor:
    return add_values(x, y, find_party(x, y), -alpha)


@implements(aten.sub_.Tensor, aten.sub_.Scalar)
def sub_(x: Any, y: Any, *, alpha: Any = 1) -> Any:
    return assign(x, add_values(x, y, find_party(x, y), -alpha))


@implements(aten.rsub.Tensor, aten.rsub.Scalar)
def rsub(x: Any, y: Any, *, alpha: Any = 1) -> MPCTensor:
    """``y - alpha * x``."""
    return add_values(y, x, find_party(x, y), -alpha)


@implements(aten.neg.default)
def neg(x: MPCTensor) -> MPCTensor:
    return neg_value(x)


@implements(aten.neg_.default)
def neg_(x: MPCTensor) -> Any:
    return assign(x, neg_value(x))


@implements(aten.mul.Tensor, aten.mul.Scalar)
def mul(x: Any, y: Any) -> MPCTensor:
    return mul_values(x, y, find_party(x, y))


@implements(aten.mul_.Tensor, aten.mul_.Scalar)
def mul_(x: Any, y: Any) -> Any:
    return assign(x, mul_values(x, y, find_party(x, y)))


def divide(x: Any, y: Any) -> MPCTensor:
    """``x / y``: local for a public ``y``; a reciprocal and a product for a secret one."""
    party = find_party(x, y)
    if public_of(y) is not None:
        return div_values(x, y, party)
    if isinstance(y, MPCTensor) and y.dtype.is_floating_point:
        return div_value(x, y)  # full-range division (relative precision of x / y)
    return mul_values(x, reciprocal_value(y), party)


@implements(aten.div.Tensor, aten.div.Scalar)
def div(x: Any, y: Any) -> MPCTensor:
    return divide(x, y)


@implements(aten.div_.Tensor, aten.div_.Scalar)
def div_(x: Any, y: Any) -> Any:
    return assign(x, divide(x, y))


def _addcmul(x: Any, t1: Any, t2: Any, value: Any) -> MPCTensor:
    party = find_party(x, t1, t2)
    prod = mul_values(t1, t2, party)
    return add_values(x, prod, party, value)


@implements(aten.addcmul.default)
def addcmul(x: Any, t1: Any, t2: Any, *, value: Any = 1) -> MPCTensor:
    return _addcmul(x, t1, t2, value)


@implements(aten.addcmul_.default)
def addcmul_(x: Any, t1: Any, t2: Any, *, value: Any = 1) -> Any:
    return assign(x, _addcmul(x, t1, t2, value))


def _addcdiv(x: Any, t1: Any, t2: Any, value: Any) -> MPCTensor:
    party = find_party(x, t1, t2)
    return add_values(x, divide(t1, t2), party, value)


@implements(aten.addcdiv.default)
def addcdiv(x: Any, t1: Any, t2: Any, *, value: Any = 1) -> MPCTensor:
    return _addcdiv(x, t1, t2, value)


@implements(aten.addcdiv_.default)
def addcdiv_(x: Any, t1: Any, t2: Any, *, value: Any = 1) -> Any:
    return assign(x, _addcdiv(x, t1, t2, value))


def _lerp(x: Any, end: Any, weight: Any) -> MPCTensor:
    """``x + weight * (end - x)``."""
    party = find_party(x, end, weight)
    diff = add_values(end, x, party, -1)
    return add_values(x, mul_values(diff, weight, party), party)


@implements(aten.lerp.Scalar, aten.lerp.Tensor)
def lerp(x: Any, end: Any, weight: Any) -> MPCTensor:
    return _lerp(x, end, weight)


@implements(aten.lerp_.Scalar, aten.lerp_.Tensor)
def lerp_(x: Any, end: Any, weight: Any) -> Any:
    return assign(x, _lerp(x, end, weight))


@implements(aten.where.self)
def where(cond: Any, a: Any, b: Any) -> MPCTensor:
    return where_values(cond, a, b)


@implements(aten.where.ScalarSelf)
def where_scalar_self(cond: Any, a: Any, b: Any) -> MPCTensor:
    return where_values(cond, a, b)


@implements(aten.where.ScalarOther)
def where_scalar_other(cond: Any, a: Any, b: Any) -> MPCTensor:
    return where_values(cond, a, b)


@implements(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(x: MPCTensor, mask: Any, value: Any) -> MPCTensor:
    """Fill where ``mask`` is set: share selection for a public mask, else a ``where``. The
    fill value is a masking operand: ``-inf``/``finfo.min`` saturate to ``-2**(40 - f)``
    (:mod:`crypten_lite.runtime.encoding`), so a softmax gives those positions probability 0."""
    return where_values(mask, value, x, mask_op="masked_fill")


@implements(aten.masked_fill_.Scalar, aten.masked_fill_.Tensor)
def masked_fill_(x: MPCTensor, mask: Any, value: Any) -> Any:
    return assign(x, where_values(mask, value, x, mask_op="masked_fill"))
