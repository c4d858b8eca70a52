"""Layer L4: the one owner of fixed-point policy — operands, scales and public encodings.

Every op sees a mix of operands: encrypted tensors (secret), encrypted tensors every party knows
(public, see :meth:`MPCTensor.public_value`), plain torch tensors and Python numbers (public).
This module alone decides what they mean in the ring: whether a public operand is an integer
(used as it is, scale 0) or a real (encoded with ``f`` fractional bits, under the saturation
rule of :mod:`crypten_lite.runtime.encoding`), which scale a result has (float32 operands carry ``f``
fractional bits, int64/bool ones — comparison results, secret indices — none), and by how many
bits a product is truncated. The L3 protocols below it work on ring integers and take those
decisions as arguments (:mod:`crypten_lite.protocols.arithmetic`: already-encoded operands and
a truncation bit count).

On top, arithmetic on operands of any kind, picking the cheapest protocol for the mix (public x
public: plaintext; secret x integer public: exact, local; secret x real public: local product
and one truncation; secret x secret: a Beaver product), so a product with a 0/1 mask needs no
truncation at all.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from crypten_lite.errors import EncodingError
from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.protocols import arithmetic
from crypten_lite.protocols.beaver import FixedOperand, prepare_fixed
from crypten_lite.protocols.sharing import share_public
from crypten_lite.protocols.truncation import truncate
from crypten_lite.runtime.encoding import (
    SaturationWarning,
    decode,
    encode,
    mask_limit,
    max_representable,
    saturate_mask,
)
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import BILINEAR_OPS
from crypten_lite.tensor import MPCTensor, current_user_call

__all__ = [
    "add_values",
    "assign",
    "bilinear_values",
    "div_values",
    "encode_operand",
    "float_dtype",
    "frac_of",
    "is_integral",
    "logical_dtype",
    "mul_values",
    "neg_value",
    "out_frac",
    "public_operand",
    "release_fixed_operands",
    "ring_of",
    "scale_value",
    "to_float",
    "where_values",
    "wrap_public",
]


# --------------------------------------------------------------------------- operands and scales
def is_integral(value: torch.Tensor) -> bool:
    """Whether a public tensor holds integers only (public data, so inspecting it is fine)."""
    if not value.dtype.is_floating_point:
        return True
    return bool(torch.equal(value, torch.round(value))) and bool(value.abs().max() < 2**40)


def frac_of(x: Any, party: Party) -> int:
    """Fractional bits an operand is (or would be) encoded with."""
    if isinstance(x, MPCTensor):
        return x.frac_bits
    if isinstance(x, torch.Tensor):
        return party.frac_bits if x.dtype.is_floating_point else 0
    if isinstance(x, float):
        return party.frac_bits
    return 0


_WARNED: set[str] = set()


_WARNED_LOCK = threading.Lock()


def _op_name(mask_op: str | None) -> str:
    call = current_user_call()
    if call and mask_op:
        return f"{mask_op} (called from {call})"
    return call or mask_op or "an op"


def encode_operand(
    value: torch.Tensor, frac: int, party: Party, *, mask_op: str | None = None
) -> torch.Tensor:
    """Encode a public operand at ``frac`` fractional bits under the rule of
    :mod:`crypten_lite.runtime.encoding`.

    With ``mask_op`` (the name of a masking op: ``add``, ``where``, ``masked_fill``, ...)
    floating values beyond ``2**(40 - f)``, ``±inf`` included, saturate to the sentinel
    ``±2**(40 - f)`` with one :class:`~crypten_lite.runtime.encoding.SaturationWarning` per op and
    process. Every other out-of-range value (and NaN) raises :class:`EncodingError` naming the
    op. Public values are the same on every party, so every party raises (or saturates) alike.
    """
    name = _op_name(mask_op)
    try:
        if mask_op is not None:
            value, changed = saturate_mask(value, party.frac_bits)
            if changed:
                with _WARNED_LOCK:
                    first = mask_op not in _WARNED
                    _WARNED.add(mask_op)
                if first:
                    warnings.warn(
                        f"{name}: public values beyond ±{mask_limit(party.frac_bits):g} "
                        f"(-inf, finfo.min, -1e9 masks) saturated to that sentinel; a softmax "
                        "gives such masked positions probability 0 (warned once per op)",
                        SaturationWarning,
                        stacklevel=2,
                    )
        return encode(value, frac)
    except EncodingError as exc:
        hint = (
            ""
            if mask_op is not None
            else "; only masking operands (add/sub, where, masked_fill, attention masks) saturate"
        )
        raise EncodingError(f"party {party.rank}: public operand of {name}: {exc}{hint}") from None


def ring_of(
    x: Any, party: Party, frac: int | None = None, *, mask_op: str | None = None
) -> torch.Tensor:
    """This party's int64 share of operand ``x`` at ``frac`` fractional bits.

    Secrets are rescaled upward only (a left shift is exact and local); public operands are
    encoded (:func:`encode_operand`; ``mask_op`` names a masking op, whose operands saturate)
    and held by party 0.
    """
    own = frac_of(x, party)
    frac = own if frac is None else frac
    if isinstance(x, MPCTensor) and x.public_value() is None:
        if frac < own:
            raise AssertionError(f"cannot lower the scale of a share from {own} to {frac} bits")
        return x._share << (frac - own) if frac != own else x._share
    value = public_of(x)
    assert value is not None
    return share_public(encode_operand(value, frac, party, mask_op=mask_op), party)


def out_frac(dtype: torch.dtype, party: Party) -> int:
    """Fractional bits of a result of logical ``dtype``."""
    return party.frac_bits if dtype.is_floating_point else 0


def logical_dtype(*xs: Any) -> torch.dtype:
    """Result dtype of an arithmetic op: float32 if any operand is floating, else int64/bool."""
    kinds = []
    for x in xs:
        if isinstance(x, torch.Tensor):
            kinds.append(x.dtype)
        elif isinstance(x, float):
            kinds.append(torch.float32)
        elif isinstance(x, bool):
            kinds.append(torch.bool)
        elif isinstance(x, int):
            kinds.append(torch.int64)
    if any(k.is_floating_point for k in kinds):
        return torch.float32
    if kinds and all(k == torch.bool for k in kinds):
        return torch.bool
    return torch.int64


def float_dtype(dtype: torch.dtype) -> torch.dtype:
    """MPCTensor logical dtype for a torch dtype: floats become float32."""
    if dtype.is_floating_point:
        return torch.float32
    if dtype == torch.bool:
        return torch.bool
    return torch.int64


def wrap_public(value: torch.Tensor, party: Party, dtype: torch.dtype | None = None) -> MPCTensor:
    """An encrypted tensor every party knows: party 0 holds the encoding, the others zero."""
    dtype = float_dtype(value.dtype) if dtype is None else dtype
    value = value.detach().to(dtype)
    frac = party.frac_bits if dtype.is_floating_point else 0
    return MPCTensor(share_public(encode(value, frac), party), party, dtype=dtype, public=value)


def assign(target: Any, result: Any) -> Any:
    """Write ``result`` into ``target`` in place (the tail of every ``op_`` implementation).

    The share buffer is overwritten, so views and detached aliases see the new value; the public
    value and stashes of every alias become stale, and ``target`` keeps the result's public value
    when it has one.
    """
    if not isinstance(target, MPCTensor):
        party = find_party(result)
        if isinstance(result, MPCTensor) and result.public_value() is not None:
            target.copy_(result.public_value())
            return target
        raise unsupported(
            "cannot write an encrypted value into a plain tensor in place (encrypt that tensor "
            "first, e.g. with crypten_lite.encrypt_module)",
            party,
        )
    party = target.party
    if isinstance(result, MPCTensor):
        if result.frac_bits > target.frac_bits:
            raise unsupported(
                f"cannot write an encrypted {result.dtype} value into an encrypted "
                f"{target.dtype} tensor in place (that would need a secure floor)",
                party,
            )
        share = ring_of(result, party, target.frac_bits)
        public = result.public_value()
    else:
        public = public_of(result)
        assert public is not None
        share = ring_of(public.to(target.dtype), party, target.frac_bits)
    target._share.copy_(share.expand(target._share.shape))
    target.mark_written()
    if public is not None:
        target._pub = public.to(target.dtype).expand(target.shape).clone()
        target._pub_version = target._alias.version
    return target


# --------------------------------------------------------------------------- arithmetic
def add_values(x: Any, y: Any, party: Party, alpha: Any = 1, *, mask_op: str = "add") -> MPCTensor:
    """``x + alpha * y`` for any mix of operands (local: shares add, party 0 adds publics).

    A public operand is a masking operand (additive attention masks): where its value lies
    beyond ``2**(40 - f)`` (``finfo.min``, ``±inf``, ``-1e9``) the result is the sentinel
    ``±2**(40 - f)`` itself, as float arithmetic absorbs a small addend into a huge one, with a
    warning (:mod:`crypten_lite.runtime.encoding`); ``mask_op`` names the op in that warning. So a row
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
    return wrap(-x._share, x.party, dtype=x.dtype, public=None if public is None else -public)


def public_operand(value: torch.Tensor, party: Party) -> tuple[torch.Tensor, int]:
    """A public multiplier in the ring, and its scale: the one rule for products with publics.

    Integers (integer or bool tensors, and floating tensors holding integers below ``2**40``) are
    used as they are, at scale 0, so the product is exact and needs no truncation; reals are
    encoded with ``f`` fractional bits (an out-of-range or non-finite real raises
    :class:`EncodingError` naming the op, on every party alike: public values are the same
    everywhere).
    """
    if is_integral(value):
        return value.to(torch.int64), 0
    if value.numel():
        limit = max_representable(party.frac_bits)
        if not bool(torch.isfinite(value).all()) or float(value.abs().max()) >= limit:
            encode_operand(value, party.frac_bits, party)  # raises, naming the op
    return encode(value.to(torch.float64), party.frac_bits), party.frac_bits


def _rescaled(z: torch.Tensor, scale: int, target: int, party: Party) -> torch.Tensor:
    """A share at ``2**scale`` brought to ``2**target``: exact left shift up, truncation down."""
    if scale > target:
        return truncate(z, party, scale - target)
    return z << (target - scale) if scale < target else z


def scale_value(x: Any, factor: Any, party: Party) -> Any:
    """``x * factor`` for a public scalar ``factor`` (used for ``alpha``/``beta`` arguments)."""
    if isinstance(factor, (int, float)) and factor == 1:
        return x
    return mul_values(x, factor, party)


def bilinear_values(
    op: str, x: Any, y: Any, party: Party, params: Mapping[str, Any] | None = None
) -> MPCTensor:
    """Fixed-point ``op(x, y)`` for a bilinear op (``mul``, ``matmul``, ``conv2d``, ...).

    Public x public is plaintext; secret x public is local (plus a truncation when the scales
    of the operands add up to more than the result's); secret x secret is one Beaver product,
    truncated from the sum of the operands' scales to the result's in the same dealer request.
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
        scale = x.frac_bits + y.frac_bits
        shift = max(0, scale - f_out)
        if op == "mul" and x._share is y._share:
            z = arithmetic.square(x._share, party, shift=shift)
        else:
            a, b = _fixed_or_share(x, party), _fixed_or_share(y, party)
            if isinstance(a, FixedOperand) and isinstance(b, FixedOperand):
                a = x._share
            z = arithmetic.product(op, a, b, party, params, shift=shift)
        return wrap(_rescaled(z, scale - shift, f_out, party), party, dtype=dtype)
    if px is None:
        secret, pub, public_first = x, py, False
    else:
        secret, pub, public_first = y, px, True
    assert pub is not None
    ring, frac = public_operand(pub, party)
    scale = secret.frac_bits + frac
    shift = max(0, scale - f_out)
    z = arithmetic.public_product(
        op, secret._share, ring, party, params, shift=shift, public_first=public_first
    )
    return wrap(_rescaled(z, scale - shift, f_out, party), party, dtype=dtype)


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
    # The quotient keeps the dividend's scale: the divisor is a count or a real, never encoded.
    if is_integral(py):
        divisor: Any = int(py) if py.dim() == 0 else py.to(torch.int64)
    else:
        divisor = py.to(torch.float64)
    if bool(torch.as_tensor(divisor == 0).any()):
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
    :mod:`crypten_lite.runtime.encoding`); ``mask_op`` names the op in the warning.
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
