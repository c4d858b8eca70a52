"""Layer L1: fixed-point encoding of real numbers into Z_2^64.

A real ``x`` is represented by the ring element ``round(x * 2**f)``; ``f`` (``frac_bits``) is 16
by default. Decoding is exact: the ring element is split into its integer part (an arithmetic
shift, i.e. floor division by ``2**f``, correct for negative values) and its ``f`` low bits, so
``decode(encode(x))`` differs from ``x`` by at most ``2**-(f+1)`` for every representable ``x``.

Public operands beyond the headroom (the one rule, applied identically on every party because
public values are the same everywhere; the ops layer calls :func:`saturate_mask`):

* **Masking operands** — the public operand of an addition or subtraction (additive attention
  masks), the fill value of ``masked_fill`` / ``where``, attention masks (not ``index_put``: its
  values follow the second rule): every value with ``|v| > 2**(40 - f)`` (``2**24 ~ 1.7e7`` at
  ``f = 16``) — ``torch.finfo(dtype).min``, ``-inf``, ``-1e9`` — is replaced by the sentinel
  ``±2**(40 - f)``, with one :class:`SaturationWarning` per op. The sentinel sits far below any
  score a softmax must keep (its max subtraction and exp floor then give the masked positions
  exactly 0, as torch does), while sums of a few sentinels and comparisons stay exact (ring
  values ``2**40``, far from ``2**63``). In an addition the masked result *is* the sentinel
  (float arithmetic absorbs a small addend into ``finfo.min`` too), so a row masked everywhere
  is uniform after softmax, as in torch (torch gives NaN for an all ``-inf`` row). A product of
  a sentinel with a secret above ``2**7`` overflows (masks are added right before a softmax in
  practice). NaN raises.
* **Every other public operand** (multipliers, divisors, thresholds, ...): NaN, ``±inf`` and
  ``|v| >= 2**(63 - f)`` raise :class:`~crypten_lite.errors.EncodingError` naming the op and the
  value; everything else is encoded exactly.
"""

from __future__ import annotations

import torch

from crypten_lite.errors import EncodingError

__all__ = [
    "SaturationWarning",
    "decode",
    "encode",
    "mask_limit",
    "max_representable",
    "saturate_mask",
]

MASK_BITS = 40
"""Masking operands saturate at ring magnitude ``2**MASK_BITS`` (reals ``2**(MASK_BITS - f)``)."""


class SaturationWarning(UserWarning):
    """A public masking operand beyond ``2**(40 - f)`` (``-inf``, ``finfo.min``, ``-1e9``) was
    replaced by the sentinel ``±2**(40 - f)`` (see the module docstring)."""


def max_representable(frac_bits: int) -> float:
    """Largest magnitude a public value may have: ``2**(63 - f)``, exclusive."""
    return float(2 ** (63 - frac_bits))


def mask_limit(frac_bits: int) -> float:
    """Magnitude of the masking sentinel: ``2**(40 - frac_bits)`` (``2**24`` at ``f = 16``)."""
    return float(2 ** (MASK_BITS - frac_bits))


def saturate_mask(value: torch.Tensor, frac_bits: int) -> tuple[torch.Tensor, bool]:
    """A public masking operand with every ``|v| > 2**(40 - f)`` (``±inf`` included) replaced by
    ``±2**(40 - f)``; returns ``(value, whether anything changed)``. Integer and bool values
    pass unchanged (:func:`encode` checks their range).

    Raises:
        EncodingError: a value is NaN.
    """
    if not value.is_floating_point():
        return value, False
    if not value.numel():
        return value, False
    if bool(torch.isnan(value).any()):
        raise EncodingError("cannot encode NaN")
    limit = mask_limit(frac_bits)
    over = value.abs() > limit
    if not bool(over.any()):
        return value, False
    wide = value.to(torch.float64)
    return torch.where(over, torch.sign(wide) * limit, wide), True


def encode(value: torch.Tensor | float | int, frac_bits: int) -> torch.Tensor:
    """Encode public values as int64 ring elements ``round(value * 2**frac_bits)``.

    Integer tensors are shifted exactly; floating tensors are scaled in float64 and rounded to
    nearest (ties to even).

    Raises:
        EncodingError: a value is NaN, infinite, or ``|value| >= 2**(63 - frac_bits)``.
    """
    t = torch.as_tensor(value)
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if not t.is_floating_point() and not t.is_complex():
        t = t.to(torch.int64)
        limit = 1 << (63 - frac_bits)
        if t.numel() and (t.max().item() >= limit or t.min().item() < -limit):
            raise EncodingError(
                f"integer value out of the fixed-point range (|x| < 2**{63 - frac_bits})"
            )
        return t << frac_bits
    if t.is_complex():
        raise EncodingError("complex values cannot be encoded")
    scaled = t.to(torch.float64) * float(1 << frac_bits)
    if t.numel():
        if not bool(torch.isfinite(scaled).all()):
            raise EncodingError("cannot encode NaN or infinite values")
        if bool((scaled.abs() >= 2.0**63).any()):
            raise EncodingError(
                f"value out of the fixed-point range (|x| < 2**{63 - frac_bits} = "
                f"{max_representable(frac_bits):g})"
            )
    return torch.round(scaled).to(torch.int64)


def decode(ring: torch.Tensor, frac_bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode int64 ring elements into real numbers of ``dtype``.

    ``ring >> f`` is the floor of ``ring / 2**f`` for negative values too, and the low bits are
    a non-negative fraction, so their sum is exact in float64 for ``|ring| < 2**53``.
    """
    if ring.dtype != torch.int64:
        raise TypeError(f"ring tensors are int64, got {ring.dtype}")
    if frac_bits == 0:
        return ring.to(dtype)
    whole = (ring >> frac_bits).to(torch.float64)
    frac = (ring & ((1 << frac_bits) - 1)).to(torch.float64) / float(1 << frac_bits)
    return (whole + frac).to(dtype)
