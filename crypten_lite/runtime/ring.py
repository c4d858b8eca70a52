"""Layer L1: the ring Z_2^64 on ``torch.int64``.

``torch.int64`` arithmetic wraps modulo 2**64 (two's complement), so ``+``, ``-``, ``*`` and
integer matmul/convolution are ring operations as they are. This module adds what plain torch
does not say directly: unsigned views of a ring element, logical shifts and the bilinear ops
that Beaver triples are made for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "BILINEAR_OPS",
    "RING_BITS",
    "bilinear",
    "bilinear_output_shape",
    "freeze_params",
    "logical_rshift",
    "msb",
    "unsigned_lt",
    "wrap",
]

RING_BITS = 64
_MIN = -(1 << 63)


def wrap(value: int) -> int:
    """A Python integer reduced into the signed int64 range (mod 2**64)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def msb(x: torch.Tensor) -> torch.Tensor:
    """The most significant bit of each ring element, as int64 0/1."""
    return (x >> 63) & 1


def logical_rshift(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` read as unsigned, shifted right by ``k`` bits (zeros come in at the top)."""
    if k == 0:
        return x.clone()
    return (x >> k) & ((1 << (64 - k)) - 1)


def unsigned_lt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a < b`` with both read as unsigned 64-bit integers (flip the sign bit, compare)."""
    return (a ^ _MIN) < (b ^ _MIN)


def _conv_transpose2d(a: torch.Tensor, b: torch.Tensor, **params: Any) -> torch.Tensor:
    return F.conv_transpose2d(a, b, **params)


def _einsum(a: torch.Tensor, b: torch.Tensor, *, equation: str) -> torch.Tensor:
    # Two operands, each used once: linear in each (e.g. "bij,bjk->bik", "i,j->ij").
    if not isinstance(equation, str) or equation.count(",") != 1:
        raise ValueError(f"einsum needs a two-operand equation, got {equation!r}")
    return torch.einsum(equation, a, b)


BILINEAR_OPS: Mapping[str, Callable[..., torch.Tensor]] = {
    "mul": torch.mul,
    "matmul": torch.matmul,
    "conv1d": F.conv1d,
    "conv2d": F.conv2d,
    "conv_transpose1d": F.conv_transpose1d,
    "conv_transpose2d": _conv_transpose2d,
    "einsum": _einsum,
}
"""Ops ``c = op(a, b)`` linear in each argument, by name (the name travels to the dealer)."""


def bilinear(
    op: str, a: torch.Tensor, b: torch.Tensor, params: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """Apply the bilinear op ``op`` with keyword ``params`` to ring tensors."""
    try:
        fn = BILINEAR_OPS[op]
    except KeyError:
        raise ValueError(f"unknown bilinear op {op!r}; known: {sorted(BILINEAR_OPS)}") from None
    return fn(a, b, **(params or {}))


def freeze_params(params: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """A hashable, order-independent form of bilinear-op keyword parameters.

    Lists become tuples (``stride=[1, 2]`` and ``stride=(1, 2)`` are the same key).
    """
    if not params:
        return ()
    return tuple(sorted((k, _freeze(v)) for k, v in params.items()))


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return freeze_params(value)
    return value


@functools.lru_cache(maxsize=4096)
def _output_shape(
    op: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], frozen: tuple[tuple[str, Any], ...]
) -> tuple[int, ...]:
    if op == "mul":
        return tuple(torch.broadcast_shapes(a_shape, b_shape))  # type: ignore[no-untyped-call]
    a = torch.empty(a_shape, dtype=torch.float32, device="meta")
    b = torch.empty(b_shape, dtype=torch.float32, device="meta")
    return tuple(bilinear(op, a, b, dict(frozen)).shape)


def bilinear_output_shape(
    op: str,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    params: Mapping[str, Any] | None = None,
) -> tuple[int, ...]:
    """Shape of ``op(a, b)`` without computing it.

    Shape inference runs on the meta device, which costs around a millisecond, so results are
    cached per ``(op, shapes, params)`` (elementwise ``mul`` is plain broadcasting).

    Raises:
        ValueError: unknown op.
        RuntimeError: the shapes or parameters do not fit the op (torch's message).
    """
    if op not in BILINEAR_OPS:
        raise ValueError(f"unknown bilinear op {op!r}; known: {sorted(BILINEAR_OPS)}")
    return _output_shape(op, tuple(a_shape), tuple(b_shape), freeze_params(params))
