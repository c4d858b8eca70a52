"""Layer L4: group normalisation, forward and backward (instance norm rides on batch norm).

``GroupNorm`` normalises each sample's channel group ``g`` over its ``C/G`` channels and all
spatial positions: the input read as ``(N, G, C/G * HxW)`` goes through the shared
``_normalise`` of ``ops.normalization`` over its last axis (local means, one square, one
inverse square root for the ``N * G`` variances), then the per-channel affine map. The backward
is the layer-norm formula on the same grouping,

    grad_x = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),   g = grad_out * weight,

with ``x_hat`` stashed on the saved ``rstd``; ``grad_weight = sum(grad_out * x_hat)`` and
``grad_bias = sum(grad_out)`` over batch and space. Error: that of ``inv_sqrt`` (relative
``4.9e-5``) on the variances, plus a few truncations.

``InstanceNorm1d/2d`` need no op here: torch computes them as a batch norm of the input viewed
as ``(1, N * C, ...)`` (``ops.normalization``), with the running statistics averaged back per
channel by ordinary ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.ops.normalization import _normalise
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []

_XHAT = "group_norm:x_hat"


def _channel_shape(x: Any) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


@implements(aten.native_group_norm.default)
def native_group_norm(
    x: Any, weight: Any, bias: Any, n: int, c: int, hxw: int, group: int, eps: float
) -> tuple[Any, Any, Any]:
    """Returns ``(out, mean, rstd)``, the statistics shaped ``(N, G)`` as torch's."""
    grouped = x.reshape(n, group, (c // group) * hxw)
    xhat, mean, rstd, _ = _normalise(grouped, [2], eps)
    out = xhat.reshape(x.shape)
    shape = _channel_shape(x)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    rstd_flat = rstd.reshape(n, group)
    if isinstance(rstd_flat, MPCTensor):
        rstd_flat.stash(_XHAT, xhat)
    return out, mean.reshape(n, group), rstd_flat


@implements(aten.native_group_norm_backward.default)
def native_group_norm_backward(
    grad: Any,
    x: Any,
    mean: Any,
    rstd: Any,
    weight: Any,
    n: int,
    c: int,
    hxw: int,
    group: int,
    output_mask: Sequence[bool],
) -> tuple[Any, Any, Any]:
    k = (c // group) * hxw
    xhat = rstd.stashed(_XHAT) if isinstance(rstd, MPCTensor) else None
    rstd_g = rstd.reshape(n, group, 1)
    if xhat is None:
        xhat = (x.reshape(n, group, k) - mean.reshape(n, group, 1)) * rstd_g
    shape = _channel_shape(x)
    batch_and_space = [0, *range(2, x.dim())]
    gx = gw = gb = None
    if output_mask[0]:
        g = (grad * weight.reshape(shape) if weight is not None else grad).reshape(n, group, k)
        centred = g - g.mean([2], keepdim=True) - xhat * (g * xhat).mean([2], keepdim=True)
        gx = (rstd_g * centred).reshape(x.shape)
    if output_mask[1] and weight is not None:
        gw = (grad * xhat.reshape(x.shape)).sum(batch_and_space)
    if output_mask[2]:
        gb = grad.sum(batch_and_space)
    return gx, gw, gb
