"""Layer L3: 2-D pooling on sharings (max with one-hot windows for the backward pass, average,
adaptive average and adaptive max).

Windows are gathered from the share tensor locally (unfold / gather are shape ops, so they
commute with the sharing); padding for max pooling is a public very negative constant that
party 0 adds, so it never wins. Max pooling reduces every window with one comparison depth
(:mod:`crypten_lite.protocols.reduction`): a 2x2 window costs 5 rounds in all, windows up to
10 elements too (CrypTen spends 46 rounds on a 2x2 max-pool).

Shapes follow torch: inputs ``(N, C, H, W)`` or ``(C, H, W)``; kernel, stride, padding and
dilation are ints or pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crypten_lite.protocols.arithmetic import div_public
from crypten_lite.protocols.beaver import beaver
from crypten_lite.protocols.reduction import max_dim
from crypten_lite.runtime.party import Party

__all__ = [
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "max_pool2d",
    "max_pool2d_backward",
]

Tensor = torch.Tensor
IntPair = int | Sequence[int]
_PAD = -(1 << 62)


def _pair(v: IntPair) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # torch: the last window must start inside the input or the left padding
    return out


def _window_index(
    h: int,
    w: int,
    kernel: IntPair,
    stride: IntPair | None,
    padding: IntPair,
    dilation: IntPair,
    ceil_mode: bool,
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Flat input positions of every window element (public).

    Returns:
        ``(index (oh, ow, kh*kw), valid (oh, ow, kh*kw) bool, (oh, ow))``; invalid entries are
        padding (their index points at position 0).
    """
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride if stride is not None else kernel)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    oh = _out_size(h, kh, sh, ph, dh, ceil_mode)
    ow = _out_size(w, kw, sw, pw, dw, ceil_mode)
    rows = (torch.arange(oh) * sh - ph).view(oh, 1, 1, 1) + (torch.arange(kh) * dh).view(
        1, 1, kh, 1
    )
    cols = (torch.arange(ow) * sw - pw).view(1, ow, 1, 1) + (torch.arange(kw) * dw).view(
        1, 1, 1, kw
    )
    rows, cols = torch.broadcast_tensors(rows, cols)  # type: ignore[no-untyped-call]
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    index = torch.where(valid, rows * w + cols, torch.zeros_like(rows))
    return index.reshape(oh, ow, kh * kw), valid.reshape(oh, ow, kh * kw), (oh, ow)


def _gather_windows(x: Tensor, index: Tensor, valid: Tensor, fill: int, party: Party) -> Tensor:
    """``(..., H, W)`` shares -> ``(..., oh, ow, K)``; invalid slots hold ``fill`` (party 0)."""
    *lead, h, w = x.shape
    flat = x.reshape(*lead, h * w)
    win = flat[..., index.reshape(-1)].reshape(*lead, *index.shape)
    pad = torch.zeros((), dtype=torch.int64) if party.rank else torch.tensor(fill)
    return torch.where(valid, win, pad)


def max_pool2d(
    x: Tensor,
    party: Party,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> tuple[Tensor, Tensor]:
    """2-D max pooling: ``[max over each window]`` and the windows' one-hot argmax.

    1. Gather every window's elements (local; padding is a public value below every input).
    2. :func:`~crypten_lite.protocols.reduction.max_dim` over the window elements, with the
       one-hot (one comparison depth for windows of up to 10 elements).

    Args:
        x: int64 shares ``(N, C, H, W)`` or ``(C, H, W)``, any scale.

    Returns:
        ``(out (..., oh, ow), onehot (..., oh, ow, kh * kw))``; ``onehot`` (arithmetic 0/1,
        scale 0) is what :func:`max_pool2d_backward` needs. Ties go to the first window element,
        as in torch.

    Cost (windows of ``K <= 10`` elements, ``M`` windows): 5 rounds (4 for ``K = 2``); each
    party sends about ``M (13 K (K - 1) / 2 + 18 K)`` bytes to each peer (2x2: ``~150`` bytes
    per window). Exact (selection), for inputs ``|x| < 2**62`` in ring units.
    Security: semi-honest, as :func:`~crypten_lite.protocols.reduction.max_dim`.
    Reference: see :mod:`crypten_lite.protocols.reduction`.
    """
    h, w = x.shape[-2:]
    index, valid, _ = _window_index(h, w, kernel_size, stride, padding, dilation, ceil_mode)
    windows = _gather_windows(x, index, valid, _PAD, party)
    out, onehot = max_dim(windows, party, -1, onehot=True)
    assert onehot is not None
    return out, onehot


def max_pool2d_backward(
    grad_out: Tensor,
    onehot: Tensor,
    party: Party,
    input_shape: Sequence[int],
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """Gradient of :func:`max_pool2d`: route each output gradient to its window's maximum.

    1. One Beaver product ``onehot * grad_out`` (the one-hot is a ring integer: no truncation).
    2. Scatter-add the window contributions back to the input positions (local).

    Cost: 1 round; each party sends ``8 * 2 * numel(onehot)`` bytes to each peer.
    Security: semi-honest, as Beaver multiplication.
    Reference: Beaver, CRYPTO'91.
    """
    h, w = int(input_shape[-2]), int(input_shape[-1])
    index, valid, _ = _window_index(h, w, kernel_size, stride, padding, dilation, ceil_mode)
    contrib = beaver("mul", onehot, grad_out.unsqueeze(-1), party, tag="maxpool.backward")
    contrib = contrib * valid  # padding slots route nowhere
    lead = contrib.shape[:-3]
    grad = torch.zeros((*lead, h * w), dtype=torch.int64)
    grad.index_add_(-1, index.reshape(-1), contrib.reshape(*lead, -1))
    return grad.reshape(*lead, h, w)


def avg_pool2d(
    x: Tensor,
    party: Party,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """2-D average pooling (torch semantics): window sums (local), then a public division.

    Cost: as :func:`~crypten_lite.protocols.arithmetic.div_public` (0 rounds with local
    truncation; 1 round with dealer truncation). Error: at most one ulp plus the encoding
    error of the divisor (below ``2**-(f+1)`` relative).
    Security: semi-honest; no opening besides the truncation's.

    Reference: as :mod:`crypten_lite.protocols.truncation`.
    """
    h, w = x.shape[-2:]
    index, valid, (oh, ow) = _window_index(h, w, kernel_size, stride, padding, 1, ceil_mode)
    total = _gather_windows(x, index, valid, 0, party).sum(-1)
    if divisor_override is not None:
        return div_public(total, int(divisor_override), party)
    kh, kw = _pair(kernel_size)
    if count_include_pad:
        # torch counts the padding but not the ceil-mode overhang beyond it
        ph, pw = _pair(padding)
        sh, sw = _pair(stride if stride is not None else kernel_size)
        r0 = torch.arange(oh) * sh - ph
        c0 = torch.arange(ow) * sw - pw
        rh = torch.clamp(torch.minimum(r0 + kh, torch.tensor(h + ph)) - r0, min=1)
        cw = torch.clamp(torch.minimum(c0 + kw, torch.tensor(w + pw)) - c0, min=1)
        counts = rh.view(oh, 1) * cw.view(1, ow)
    else:
        counts = valid.sum(-1)
    if bool((counts == counts.flatten()[0]).all()):
        return div_public(total, int(counts.flatten()[0]), party)
    return div_public(total, counts.to(torch.float64), party)


def _adaptive_ranges(size: int, out: int) -> tuple[Tensor, Tensor]:
    i = torch.arange(out)
    start = (i * size) // out
    end = -((-(i + 1) * size) // out)
    return start, end


def _adaptive_index(h: int, w: int, output_size: IntPair) -> tuple[Tensor, Tensor]:
    oh, ow = _pair(output_size)
    hs, he = _adaptive_ranges(h, oh)
    ws, we = _adaptive_ranges(w, ow)
    kh = int((he - hs).max())
    kw = int((we - ws).max())
    rows = hs.view(oh, 1, 1, 1) + torch.arange(kh).view(1, 1, kh, 1)
    cols = ws.view(1, ow, 1, 1) + torch.arange(kw).view(1, 1, 1, kw)
    valid = (rows < he.view(oh, 1, 1, 1)) & (cols < we.view(1, ow, 1, 1))
    rows, cols = torch.broadcast_tensors(rows, cols)  # type: ignore[no-untyped-call]
    valid = valid.expand(rows.shape)
    index = torch.where(valid, rows * w + cols, torch.zeros_like(rows))
    return index.reshape(oh, ow, kh * kw), valid.reshape(oh, ow, kh * kw)


def adaptive_avg_pool2d(x: Tensor, party: Party, output_size: IntPair) -> Tensor:
    """Adaptive average pooling (torch's window rule ``[floor(i H/o), ceil((i+1) H/o))``).

    Window sums are local; one public division by the window sizes.
    Cost and error: as :func:`avg_pool2d`.

    Security: as :func:`avg_pool2d`.
    Reference: torch's adaptive pooling windows; truncation as in :func:`avg_pool2d`.
    """
    h, w = x.shape[-2:]
    index, valid = _adaptive_index(h, w, output_size)
    total = _gather_windows(x, index, valid, 0, party).sum(-1)
    counts = valid.sum(-1)
    if bool((counts == counts.flatten()[0]).all()):
        return div_public(total, int(counts.flatten()[0]), party)
    return div_public(total, counts.to(torch.float64), party)


def adaptive_max_pool2d(
    x: Tensor, party: Party, output_size: IntPair
) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive max pooling: values, the one-hot over each (padded) window, and the windows'
    flat input positions ``(oh, ow, K)`` (public) to route a gradient.

    Cost: as :func:`max_pool2d` with ``K`` the largest window.

    Security and reference: as :func:`max_pool2d`.
    """
    h, w = x.shape[-2:]
    index, valid = _adaptive_index(h, w, output_size)
    windows = _gather_windows(x, index, valid, _PAD, party)
    out, onehot = max_dim(windows, party, -1, onehot=True)
    assert onehot is not None
    return out, onehot, torch.where(valid, index, torch.full_like(index, -1))
