"""Layer L4: resampling — ``F.interpolate`` / ``nn.Upsample`` and pixel (un)shuffle.

Every interpolation mode torch offers without antialiasing (nearest, nearest-exact, linear,
bilinear, bicubic, trilinear; 1-d to 3-d) is a *public* linear map applied separably along each spatial axis:
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


@functools.lru_cache(maxsize=256)
def _axis_matrix(
    op: Any, ndim: int, axis: int, n_in: int, n_out: int, options: tuple[tuple[str, Any], ...]
) -> torch.Tensor:
    """``A`` of shape ``(n_out, n_in)``: ``op`` along spatial ``axis`` (of ``ndim``).

    The basis input holds, in batch row ``k``, a one at position ``k`` of that axis; every
    other spatial axis has size 1 and stays 1 (the weights along one axis depend only on its
    own sizes, scale and ``align_corners``), so the call costs ``n_in * n_out`` numbers. Row
    ``k`` of the output is column ``k`` of ``A``. ``options``: the op's other arguments by
    name, the per-axis ones (``scales_*``) already reduced to this axis.
    """
    shape = [1] * ndim
    shape[axis] = n_in
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, *shape)
    out_size = [1] * ndim
    out_size[axis] = n_out
    out: torch.Tensor = op(basis, out_size, **dict(options))
    return out.reshape(n_in, n_out).t().contiguous()


def _matrices(op: Any, in_spatial: Sequence[int], bound: dict[str, Any]) -> list[torch.Tensor]:
    """Per-axis matrices of ``op`` with the arguments ``bound`` (names of ``op``'s schema)."""
    names = [a.name for a in op._schema.arguments[2:]]  # after (self, output_size)
    scales = [n for n in names if n.startswith("scales")]
    out_size = [int(v) for v in bound["output_size"]]
    mats = []
    for axis, n_in in enumerate(in_spatial):
        options = []
        for name in names:
            value = bound.get(name)
            if name in scales and scales.index(name) != axis:
                value = None  # the other axes have size 1 -> 1
            options.append((name, value))
        mats.append(
            _axis_matrix(op, len(in_spatial), axis, int(n_in), out_size[axis], tuple(options))
        )
    return mats


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


def _bind(op: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``op``'s arguments by schema name (defaults filled in)."""
    bound = {}
    for i, arg in enumerate(op._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _register(forward: Any, backward: Any) -> None:
    """``forward(x, output_size, [align_corners,] scales...)`` and its backward
    ``(grad, output_size, input_size, [align_corners,] scales...)``."""

    def fwd(*args: Any, **kwargs: Any) -> Any:
        bound = _bind(forward, args, kwargs)
        x = bound["self"]
        mats = _matrices(forward, [int(s) for s in x.shape[2:]], bound)
        return _apply(x, mats, transpose=False)

    def bwd(*args: Any, **kwargs: Any) -> Any:
        bound = _bind(backward, args, kwargs)
        mats = _matrices(forward, [int(s) for s in bound["input_size"][2:]], bound)
        return _apply(bound["grad_output"], mats, transpose=True)

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
    (aten.upsample_nearest3d.default, aten.upsample_nearest3d_backward.default),
    (aten._upsample_nearest_exact3d.default, aten._upsample_nearest_exact3d_backward.default),
    (aten.upsample_trilinear3d.default, aten.upsample_trilinear3d_backward.default),
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
