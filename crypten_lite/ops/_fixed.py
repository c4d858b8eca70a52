"""Layer L4: fixed-point arithmetic on operands of any kind, calling the L3 protocols.

Every op family builds on these: they take encrypted tensors, plain tensors or numbers, pick the
cheapest protocol for the mix (public x public: plaintext; secret x integer public: exact, local;
secret x real public: local product and one truncation; secret x secret: a Beaver product) and
track scales: float32 operands carry ``f`` fractional bits, int64/bool operands (comparison
results, secret indices) carry none, so a product with a 0/1 mask needs no truncation at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from crypten_lite.encoding import decode, encode, mask_limit, max_representable
from crypten_lite.ops._common import (
    encode_operand,
    find_party,
    is_integral,
    logical_dtype,
    public_of,
    ring_of,
    unsupported,
    wrap,
    wrap_public,
)
from crypten_lite.party import Party
from crypten_lite.protocols import arithmetic
from crypten_lite.protocols.beaver import FixedOperand, beaver, prepare_fixed
from crypten_lite.protocols.truncation import truncate
from crypten_lite.ring import BILINEAR_OPS
from crypten_lite.tensor import MPCTensor

__all__ = [
    "add_values",
    "bilinear_values",
    "div_values",
    "mul_values",
    "neg_value",
    "out_frac",
    "release_fixed_operands",
    "scale_value",
    "to_float",
    "where_values",
]


def out_frac(dtype: torch.dtype, party: Party) -> int:
    """Fractional bits of a result of logical ``dtype``."""
    return party.frac_bits if dtype.is_floating_point else 0


def add_values(x: Any, y: Any, party: Party, alpha: Any = 1, *, mask_op: str = "add") -> MPCTensor:
    """``x + alpha * y`` for any mix of operands (local: shares add, party 0 adds publics).

    A public operand is a masking operand (additive attention masks): where its value lies
    beyond ``2**(40 - f)`` (``finfo.min``, ``±inf``, ``-1e9``) the result is the sentinel
    ``±2**(40 - f)`` itself, as float arithmetic absorbs a small addend into a huge one, with a
    warning (:mod:`crypten_lite.encoding`); ``mask_op`` names the op in that warning. So a row
    masked everywhere with ``finfo.min`` becomes constant and its softmax uniform, as in torch.
    """
    if not (isinstance(alpha, (int, float)) and alpha == 1):
        py = public_of(y) if not isinstance(y, MPCTensor) else None
        # a plain public operand is scaled in plaintext: -finfo.min must not be encoded first
        y = py * alpha if py is not None else scale_value(y, alpha, party)
    dtype = logical_dtype(x, y)
    px, py = public_of(x), public_of(y)
    if px is not None and py is not None:
        return wrap_public(torch.add(px, py).to(dtype), party, dtype)
    frac = out_frac(dtype, party)
    share = ring_of(x, party, frac, mask_op=mask_op) + ring_of(y, party, frac, mask_op=mask_op)
    pub = px if px is not None else py
    if pub is not None and pub.is_floating_point() and pub.numel():
        limit = mask_limit(party.frac_bits)
        over = pub.abs() > limit  # NaN raised in ring_of
        if bool(over.any()):
            sentinel = round(limit * (1 << frac)) if party.rank == 0 else 0
            fill = torch.sign(pub).to(torch.int64) * sentinel
            share = torch.where(over, fill, share)
    return wrap(share, party, dtype=dtype)


def neg_value(x: MPCTensor) -> MPCTensor:
    """``-x``, local."""
    public = x.public_value()
    return wrap(
        arithmetic.neg(x._share), x.party, dtype=x.dtype, public=None if public is None else -public
    )


def _as_public_operand(value: torch.Tensor) -> torch.Tensor | int:
    """A public multiplier for the protocols: integers exactly, reals as float64."""
    if is_integral(value):
        return value.to(torch.int64) if value.dim() else int(value)
    return value.to(torch.float64)


def scale_value(x: Any, factor: Any, party: Party) -> Any:
    """``x * factor`` for a public scalar ``factor`` (used for ``alpha``/``beta`` arguments)."""
    if isinstance(factor, (int, float)) and factor == 1:
        return x
    return mul_values(x, factor, party)


def bilinear_values(
    op: str, x: Any, y: Any, party: Party, params: Mapping[str, Any] | None = None
) -> MPCTensor:
    """Fixed-point ``op(x, y)`` for a bilinear op (``mul``, ``matmul``, ``conv2d``, ...).

    Public x public is plaintext; secret x public is local (plus a truncation for a real public
    operand and a fixed-point secret); secret x secret is one Beaver product, truncated to the
    result's scale.
    """
    params = dict(params or {})
    fn = BILINEAR_OPS[op]
    dtype = logical_dtype(x, y)
    f_out = out_frac(dtype, party)
    px, py = public_of(x), public_of(y)
    if px is not None and py is not None:
        value = fn(px.to(torch.float64), py.to(torch.float64), **params)
        return wrap_public(value.to(dtype), party, dtype)
    if px is None and py is None:
        fx, fy = x.frac_bits, y.frac_bits
        if op == "mul" and x._share is y._share and fx == fy == f_out == party.frac_bits:
            return wrap(arithmetic.square(x._share, party), party, dtype=dtype)
        if fx == fy == f_out == party.frac_bits:
            a, b = _fixed_or_share(x, party), _fixed_or_share(y, party)
            if isinstance(a, FixedOperand) and isinstance(b, FixedOperand):
                a = x._share
            return wrap(arithmetic.bilinear(op, a, b, party, params), party, dtype=dtype)
        z = beaver(op, x._share, y._share, party, op_params=params)
        excess = fx + fy - f_out
        if excess > 0:
            z = truncate(z, party, excess)
        elif excess < 0:
            z = z << -excess
        return wrap(z, party, dtype=dtype)
    if px is None:
        secret, pub, public_first = x, py, False
    else:
        secret, pub, public_first = y, px, True
    assert pub is not None
    fs = secret.frac_bits
    if pub.is_floating_point() and pub.numel():
        limit = max_representable(party.frac_bits)
        if not bool(torch.isfinite(pub).all()) or float(pub.abs().max()) >= limit:
            encode_operand(pub, party.frac_bits, party)  # raises, naming the op
    operand = _as_public_operand(pub)
    if isinstance(operand, int) or not operand.dtype.is_floating_point:
        if op == "mul":
            z = secret._share * operand
        else:
            z = arithmetic.bilinear_public(
                op, secret._share, operand, party, params, public_first=public_first
            )
        if fs < f_out:
            z = z << (f_out - fs)
        return wrap(z, party, dtype=dtype)
    if fs == party.frac_bits:
        if op == "mul":
            z = arithmetic.mul_public(secret._share, operand, party)
        else:
            z = arithmetic.bilinear_public(
                op, secret._share, operand, party, params, public_first=public_first
            )
        return wrap(z, party, dtype=dtype)
    # A scale-0 secret (mask, index) times a real public: the product is already at scale f.
    enc = encode(operand, party.frac_bits)
    a, b = (enc, secret._share) if public_first else (secret._share, enc)
    return wrap(fn(a, b, **params), party, dtype=dtype)


def _fixed_or_share(t: MPCTensor, party: Party) -> torch.Tensor | FixedOperand:
    """The share, or — for a weight registered for mask reuse — a :class:`FixedOperand` whose
    masked value was opened once for this view and version (``protocols.beaver.prepare_fixed``).
    A stale operand (the weight was updated) is released and prepared again."""
    cache = t._alias.fixed
    if cache is None:
        return t._share
    share = t._share
    key = (tuple(share.shape), tuple(share.stride()), share.storage_offset())
    entry = cache.get(key)
    if entry is not None and entry[0] == t._alias.version:
        fixed: FixedOperand = entry[1]
        return fixed
    if entry is not None:
        entry[1].release(party)
    fixed = prepare_fixed(share, party)
    cache[key] = (t._alias.version, fixed)
    return fixed


def release_fixed_operands(t: MPCTensor, party: Party) -> None:
    """Release every reusable mask of ``t``'s buffer and stop reusing them."""
    cache = t._alias.fixed
    if cache:
        for _, fixed in cache.values():
            fixed.release(party)
    t._alias.fixed = None


def mul_values(x: Any, y: Any, party: Party) -> MPCTensor:
    """Elementwise ``x * y`` with broadcasting (see :func:`bilinear_values`)."""
    return bilinear_values("mul", x, y, party)


def div_values(x: Any, y: Any, party: Party) -> MPCTensor:
    """``x / y`` for a public ``y`` (true division; one truncation, or none for ``2**k``)."""
    py = public_of(y)
    px = public_of(x)
    if px is not None and py is not None:
        return wrap_public((px.to(torch.float64) / py.to(torch.float64)).float(), party)
    if py is None:
        raise AssertionError("div_values takes a public divisor; ops.nonlinear divides by secrets")
    share = ring_of(x, party, party.frac_bits)
    if is_integral(py):
        divisor: Any = int(py) if py.dim() == 0 else py.to(torch.int64)
    else:
        divisor = py.to(torch.float64)
    if isinstance(divisor, torch.Tensor) and bool((divisor == 0).any()):
        raise unsupported("division of an encrypted tensor by a public zero", party)
    if isinstance(divisor, int) and divisor == 0:
        raise unsupported("division of an encrypted tensor by a public zero", party)
    return wrap(arithmetic.div_public(share, divisor, party), party)


def to_float(x: Any, party: Party) -> Any:
    """An int64/bool encrypted tensor as float32 (an exact left shift); others unchanged."""
    if isinstance(x, MPCTensor) and x.dtype != torch.float32:
        public = x.public_value()
        return wrap(
            ring_of(x, party, party.frac_bits),
            party,
            public=None if public is None else public.float(),
        )
    return x


def where_values(cond: Any, a: Any, b: Any, *, mask_op: str = "where") -> MPCTensor:
    """``cond ? a : b`` elementwise.

    A public condition selects shares (local). A secret one — 0/1 at scale 0 (a comparison
    result) or a float 0/1 — costs one Beaver product, ``b + cond * (a - b)``, with no
    truncation when ``cond`` has scale 0. Public ``a``/``b`` are masking operands (fill values
    such as ``finfo.min`` or ``-inf`` saturate to ``±2**(40 - f)``, see
    :mod:`crypten_lite.encoding`); ``mask_op`` names the op in the warning.
    """
    party = find_party(cond, a, b)
    dtype = logical_dtype(a, b)
    frac = out_frac(dtype, party)
    c_pub = public_of(cond)
    if c_pub is not None:
        return wrap(
            torch.where(
                c_pub.bool(),
                ring_of(a, party, frac, mask_op=mask_op),
                ring_of(b, party, frac, mask_op=mask_op),
            ),
            party,
            dtype=dtype,
        )
    pa, pb = public_of(a), public_of(b)
    if pa is not None and not isinstance(a, MPCTensor):
        a = _saturated(pa, party, mask_op)
    if pb is not None and not isinstance(b, MPCTensor):
        b = _saturated(pb, party, mask_op)
    diff = add_values(a, b, party, -1, mask_op=mask_op)
    return add_values(b, mul_values(cond, diff, party), party, mask_op=mask_op)


def _saturated(value: torch.Tensor, party: Party, mask_op: str) -> torch.Tensor:
    """A plain masking operand with the saturation rule applied (as a public float tensor)."""
    if not value.is_floating_point():
        return value
    return decode_public(encode_operand(value, party.frac_bits, party, mask_op=mask_op), party)


def decode_public(ring: torch.Tensor, party: Party) -> torch.Tensor:
    """The real value of an encoded public tensor (float64)."""
    return decode(ring, party.frac_bits, torch.float64)
