"""Layer L4: pooling — average (local), adaptive average (local), max (comparison trees).

Average pooling is linear: window sums of the shares, divided by the public window sizes
(``protocols.pooling``, one truncation). The backward ops are the transposed maps — torch's own
``avg_pool2d_backward`` kernel on the int64 share with ``divisor_override=1`` (exact sums,
wrapping mod 2**64), and public 0/1 window matrices for the adaptive case — after dividing the
gradient by the window sizes.

Max pooling is ``protocols.pooling.max_pool2d`` (a comparison tree per window) keeping each
window's one-hot winner, stashed on the secret indices; the backward pass multiplies it with the
output gradient and scatter-adds the products back to the input positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from crypten_lite.ops._common import find_party, unsupported, wrap
from crypten_lite.ops._fixed import div_values, mul_values, ring_of
from crypten_lite.protocols import pooling
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__: list[str] = []


def _pair(v: Sequence[int] | int) -> list[int]:
    if isinstance(v, int):
        return [v, v]
    v = [int(i) for i in v]
    return v * 2 if len(v) == 1 else v


def _divisors(
    shape: Sequence[int],
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor | int:
    """The public divisor of every output window (an int when they are all equal)."""
    if divisor_override:
        return int(divisor_override)
    ones = torch.ones(1, 1, *shape[-2:], dtype=torch.float64)
    sums = F.avg_pool2d(ones, kernel, stride, padding, ceil_mode, count_include_pad, 1)
    avgs = F.avg_pool2d(ones, kernel, stride, padding, ceil_mode, count_include_pad, None)
    div = torch.round(sums / avgs)[0, 0]
    if bool((div == div.flatten()[0]).all()):
        return int(div.flatten()[0])
    return div


@implements(aten.avg_pool2d.default)
def avg_pool2d(
    x: MPCTensor,
    kernel_size: Sequence[int],
    stride: Sequence[int] = (),
    padding: Sequence[int] = (0, 0),
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> MPCTensor:
    """Window sums (local, exact), divided by the public window sizes (``protocols.pooling``)."""
    party = x.party
    k = _pair(kernel_size)
    s = _pair(stride) if stride else k
    out = pooling.avg_pool2d(
        x._share, party, k, s, _pair(padding), ceil_mode, count_include_pad, divisor_override
    )
    return wrap(out, party, dtype=x.dtype)


@implements(aten.avg_pool2d_backward.default)
def avg_pool2d_backward(
    grad: Any,
    x: Any,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> MPCTensor:
    """Spread ``grad / window size`` back over each window (transposed sum pooling)."""
    party = find_party(grad, x)
    k = _pair(kernel_size)
    s = _pair(stride) if stride else k
    p = _pair(padding)
    div = _divisors(x.shape, k, s, p, ceil_mode, count_include_pad, divisor_override)
    g = div_values(grad, div, party)
    placeholder = torch.zeros(x.shape, dtype=torch.int64)
    share = aten.avg_pool2d_backward.default(
        ring_of(g, party), placeholder, k, s, p, ceil_mode, count_include_pad, 1
    )
    return wrap(share, party)


def _window_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """0/1 matrix ``(n_out, n_in)`` of adaptive pooling's windows along one axis."""
    m = torch.zeros(n_out, n_in, dtype=torch.int64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1
    return m


def _adaptive_maps(
    shape: Sequence[int], output_size: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int]:
    oh, ow = (int(output_size[0]), int(output_size[-1]))
    mh = _window_matrix(shape[-2], oh)
    mw = _window_matrix(shape[-1], ow)
    counts = mh.sum(1, keepdim=True) * mw.sum(1).unsqueeze(0)
    count: torch.Tensor | int = counts.to(torch.float64)
    if bool((counts == counts.flatten()[0]).all()):
        count = int(counts.flatten()[0])
    return mh, mw, count


@implements(aten._adaptive_avg_pool2d.default, aten.adaptive_avg_pool2d.default)
def adaptive_avg_pool2d(x: MPCTensor, output_size: Sequence[int]) -> MPCTensor:
    """Window sums (local), divided by the window sizes (``protocols.pooling``)."""
    party = x.party
    out = pooling.adaptive_avg_pool2d(x._share, party, [int(v) for v in output_size])
    return wrap(out, party, dtype=x.dtype)


@implements(aten._adaptive_avg_pool2d_backward.default)
def adaptive_avg_pool2d_backward(grad: Any, x: Any) -> MPCTensor:
    party = find_party(grad, x)
    mh, mw, count = _adaptive_maps(x.shape, grad.shape[-2:])
    g = div_values(grad, count, party)
    return wrap(mh.t() @ ring_of(g, party) @ mw, party)


# --------------------------------------------------------------------------- max pooling

_POOL = "maxpool:one_hot"


def _window_positions(
    shape: Sequence[int],
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    ceil_mode: bool,
) -> torch.Tensor:
    """Public flat input index ``h * W + w`` of every window element, ``(OH, OW, kh * kw)`` in
    the row-major window order of ``protocols.pooling`` (padding slots point at 0)."""
    h, w = shape[-2], shape[-1]
    probe = torch.empty(1, 1, h, w, device="meta")
    oh, ow = F.max_pool2d(probe, kernel, stride, padding, dilation, ceil_mode).shape[-2:]
    rows = (torch.arange(oh) * stride[0] - padding[0]).view(oh, 1, 1, 1) + (
        torch.arange(kernel[0]) * dilation[0]
    ).view(1, 1, -1, 1)
    cols = (torch.arange(ow) * stride[1] - padding[1]).view(1, ow, 1, 1) + (
        torch.arange(kernel[1]) * dilation[1]
    ).view(1, 1, 1, -1)
    rows, cols = torch.broadcast_tensors(rows, cols)  # type: ignore[no-untyped-call]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = torch.where(inside, rows * w + cols, torch.zeros_like(rows))
    return flat.reshape(oh, ow, kernel[0] * kernel[1])


def _check_max_pool(x: Any, *args: Any) -> str | None:
    if x.dim() not in (3, 4):
        return "max_pool2d needs a 3-d or 4-d input"
    return None


def _pool_params(
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[list[int], list[int], list[int], list[int]]:
    k = _pair(kernel_size)
    return k, (_pair(stride) if stride else k), _pair(padding), _pair(dilation)


@implements(aten.max_pool2d_with_indices.default, check=_check_max_pool)
def max_pool2d_with_indices(
    x: MPCTensor,
    kernel_size: Sequence[int],
    stride: Sequence[int] = (),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    ceil_mode: bool = False,
) -> tuple[MPCTensor, MPCTensor]:
    """Maximum of each window (``protocols.pooling.max_pool2d``: one comparison tree).

    Returns the values and secret flat indices into ``H * W`` (torch's layout, computed
    locally from the one-hot); the indices carry the one-hot for the backward pass.
    """
    party = x.party
    k, s, p, d = _pool_params(kernel_size, stride, padding, dilation)
    values, onehot = pooling.max_pool2d(x._share.contiguous(), party, k, s, p, d, ceil_mode)
    flat = _window_positions(x.shape, k, s, p, d, ceil_mode)
    indices = wrap((onehot * flat).sum(-1), party, dtype=torch.int64)
    indices.stash(_POOL, onehot)
    return wrap(values, party, dtype=x.dtype), indices


@implements(aten.max_pool2d.default, check=_check_max_pool)
def max_pool2d(
    x: MPCTensor,
    kernel_size: Sequence[int],
    stride: Sequence[int] = (),
    padding: Sequence[int] = (0, 0),
    dilation: Sequence[int] = (1, 1),
    ceil_mode: bool = False,
) -> Any:
    return max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)[0]


@implements(aten.max_pool2d_with_indices_backward.default)
def max_pool2d_with_indices_backward(
    grad: Any,
    x: Any,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    ceil_mode: bool,
    indices: Any,
) -> MPCTensor:
    """Each window's gradient goes to its winner (``protocols.pooling.max_pool2d_backward``:
    one product with the stashed one-hot, no truncation, then a local scatter-add)."""
    party = find_party(grad, x, indices)
    onehot = indices.stashed(_POOL) if isinstance(indices, MPCTensor) else None
    if onehot is None:
        raise unsupported("max_pool2d backward needs the indices of its own forward pass", party)
    k, s, p, d = _pool_params(kernel_size, stride, padding, dilation)
    share = pooling.max_pool2d_backward(
        ring_of(grad, party).contiguous(), onehot, party, list(x.shape), k, s, p, d, ceil_mode
    )
    return wrap(share, party)


_ADAPTIVE = "adaptive_maxpool:one_hot"


@implements(aten.adaptive_max_pool2d.default, check=_check_max_pool)
def adaptive_max_pool2d(x: MPCTensor, output_size: Sequence[int]) -> tuple[MPCTensor, MPCTensor]:
    """Adaptive max pooling (``protocols.pooling``); indices as for ``max_pool2d``."""
    party = x.party
    size = [int(v) for v in output_size]
    values, onehot, positions = pooling.adaptive_max_pool2d(x._share.contiguous(), party, size)
    indices = wrap((onehot * positions.clamp(min=0)).sum(-1), party, dtype=torch.int64)
    indices.stash(_ADAPTIVE, (onehot, positions))
    return wrap(values, party, dtype=x.dtype), indices


@implements(aten.adaptive_max_pool2d_backward.default)
def adaptive_max_pool2d_backward(grad: Any, x: Any, indices: Any) -> MPCTensor:
    """``one_hot * grad`` (one product, no truncation), scatter-added to the input positions."""
    party = find_party(grad, x, indices)
    stashed = indices.stashed(_ADAPTIVE) if isinstance(indices, MPCTensor) else None
    if stashed is None:
        raise unsupported("adaptive_max_pool2d backward needs its own forward's indices", party)
    onehot, positions = stashed
    contrib = mul_values(grad.unsqueeze(-1), wrap(onehot, party, dtype=torch.int64), party)
    h, w = x.shape[-2], x.shape[-1]
    slots = torch.where(positions >= 0, positions, torch.full_like(positions, h * w))
    lead = contrib.shape[:-3]
    total = torch.zeros((*lead, h * w + 1), dtype=torch.int64)
    total.index_add_(-1, slots.reshape(-1), ring_of(contrib, party).reshape(*lead, -1))
    return wrap(total[..., : h * w].reshape(*lead, h, w), party)
