"""Layer L1: fixed-point encoding of real numbers into Z_2^64.

A real ``x`` is represented by the ring element ``round(x * 2**f)``; ``f`` (``frac_bits``) is 16
by default. Decoding is exact: the ring element is split into its integer part (an arithmetic
shift, i.e. floor division by ``2**f``, correct for negative values) and its ``f`` low bits, so
``decode(encode(x))`` differs from ``x`` by at most ``2**-(f+1)`` for every representable ``x``.
"""

from __future__ import annotations

import torch

from crypten_lite.errors import EncodingError

__all__ = ["decode", "encode", "max_representable"]


def max_representable(frac_bits: int) -> float:
    """Largest magnitude a public value may have: ``2**(63 - f)``, exclusive."""
    return float(2 ** (63 - frac_bits))


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
