"""Layer L4: resampling — ``F.interpolate`` / ``nn.Upsample`` and pixel (un)shuffle.

Every interpolation mode torch offers without antialiasing (nearest, nearest-exact, linear,
bilinear, bicubic) is a *public* linear map applied separably along each spatial axis:
``out = A_h x A_w^T`` with ``A`` depending only on the sizes, the scales and
``align_corners``. So the matrices are computed in plaintext — by running torch's own kernel
on a basis of unit inputs, which reproduces its index and weight arithmetic exactly — and
applied to the share as public matrix products:

* nearest (0/1 matrices): exact, local, no truncation;
* (bi)linear, bicubic: local products with real public weights, one truncation per axis
  (error: 1 ulp per axis plus the public weights' float64 rounding).

The backward ops apply the transposed matrices (the adjoint map) the same way. Pixel shuffle
and unshuffle move entries only: the same kernel on each party's share, exact.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.ops._common import find_party, share_wise
from crypten_lite.ops._fixed import bilinear_values
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []


@functools.lru_cache(maxsize=64)
def _axis_matrices(
    op: Any, in_spatial: tuple[int, ...], args: tuple[Any, ...]
) -> tuple[torch.Tensor, ...]:
    """``A_i`` of shape ``(n_out_i, n_in_i)`` for each spatial axis of ``op(x, *args)``.

    The basis input for axis ``i`` holds, in batch row ``k``, ones on the slice ``k`` of that
    axis; the output, read at position 0 of the other axes, is column ``k`` of ``A_i`` (the
    other axes see a constant, which every mode preserves).
    """
    mats = []
    for axis, n in enumerate(in_spatial):
        basis = torch.zeros((n, 1, *in_spatial), dtype=torch.float64)
        index: list[Any] = [torch.arange(n), torch.zeros(n, dtype=torch.long)]
        index += [slice(None)] * len(in_spatial)
        index[2 + axis] = torch.arange(n)
        basis[tuple(index)] = 1.0
        out = op(basis, *args)
        pick: list[Any] = [slice(None), 0] + [0] * len(in_spatial)
        pick[2 + axis] = slice(None)
        mats.append(out[tuple(pick)].t().contiguous())
    return tuple(mats)


def _apply(x: Any, mats: Sequence[torch.Tensor], transpose: bool) -> Any:
    """Apply ``A_i`` (or ``A_i^T``) along spatial axis ``i`` (axis ``2 + i`` of ``x``)."""
    party = find_party(x)
    out = x
    for axis, a in enumerate(mats):
        d = 2 + axis
        moved = out.movedim(d, -1)
        moved = bilinear_values("matmul", moved, a if transpose else a.t(), party)
        out = moved.movedim(-1, d)
    return out


def _tupled(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in values)


def _register(forward: Any, backward: Any) -> None:
    """``forward(x, output_size, *rest)`` and ``backward(grad, output_size, input_size,
    *rest)``, ``rest`` = (``align_corners``,) scales."""

    def fwd(x: MPCTensor, output_size: Sequence[int], *rest: Any) -> Any:
        in_spatial = tuple(int(s) for s in x.shape[2:])
        args = _tupled([list(output_size), *rest])
        return _apply(x, _axis_matrices(forward, in_spatial, args), transpose=False)

    def bwd(grad: Any, output_size: Sequence[int], input_size: Sequence[int], *rest: Any) -> Any:
        in_spatial = tuple(int(s) for s in input_size[2:])
        args = _tupled([list(output_size), *rest])
        return _apply(grad, _axis_matrices(forward, in_spatial, args), transpose=True)

    name = str(forward).rsplit(".", 2)[-2]
    fwd.__name__, bwd.__name__ = name, f"{name}_backward"
    fwd.__doc__ = f"``{name}`` as public per-axis matrices (module docstring)."
    bwd.__doc__ = f"``{name}``'s adjoint: the transposed matrices."
    implements(forward)(fwd)
    implements(backward)(bwd)


for _fwd, _bwd in [
    (aten.upsample_nearest1d.default, aten.upsample_nearest1d_backward.default),
    (aten.upsample_nearest2d.default, aten.upsample_nearest2d_backward.default),
    (aten._upsample_nearest_exact1d.default, aten._upsample_nearest_exact1d_backward.default),
    (aten._upsample_nearest_exact2d.default, aten._upsample_nearest_exact2d_backward.default),
    (aten.upsample_linear1d.default, aten.upsample_linear1d_backward.default),
    (aten.upsample_bilinear2d.default, aten.upsample_bilinear2d_backward.default),
    (aten.upsample_bicubic2d.default, aten.upsample_bicubic2d_backward.default),
]:
    _register(_fwd, _bwd)


# --------------------------------------------------------------------------- pixel shuffle


@implements(aten.pixel_shuffle.default)
def pixel_shuffle(x: MPCTensor, upscale_factor: int) -> MPCTensor:
    """``(N, C r^2, H, W) -> (N, C, H r, W r)`` on the share (entries move only)."""
    return share_wise(aten.pixel_shuffle.default, x, upscale_factor)


@implements(aten.pixel_unshuffle.default)
def pixel_unshuffle(x: MPCTensor, downscale_factor: int) -> MPCTensor:
    """``(N, C, H r, W r) -> (N, C r^2, H, W)`` on the share."""
    return share_wise(aten.pixel_unshuffle.default, x, downscale_factor)
