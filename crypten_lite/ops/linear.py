"""Layer L4: matrix products and convolutions, forward and backward.

``mm``/``bmm``/``addmm`` and ``convolution`` are one Beaver product each between two secrets
(local with a public operand); ``convolution_backward`` is written as two more convolutions:

* input gradient of a convolution = the transposed convolution of the output gradient with the
  weight (and the other way round for a transposed convolution);
* weight gradient = a convolution of the input with the output gradient in which batch and
  channels trade places. With ``G`` groups, the input is read as ``Cin/G`` images of ``G*N``
  channels and the output gradient as ``G*Cout/G`` filters of ``N`` channels, convolved with
  ``groups=G``, stride and dilation swapped — every group in one Beaver product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, share_wise, unsupported, wrap
from crypten_lite.ops._fixed import add_values, bilinear_values, ring_of, scale_value
from crypten_lite.ops.nonlinear import compare
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["conv_weight_grad"]


@implements(aten.mm.default, aten.bmm.default)
def mm(x: Any, y: Any) -> MPCTensor:
    return bilinear_values("matmul", x, y, find_party(x, y))


@implements(aten.matmul.default)
def matmul(x: Any, y: Any) -> MPCTensor:
    """``torch.matmul`` (met inside other ops' implementations; users' calls decompose)."""
    return bilinear_values("matmul", x, y, find_party(x, y))


@implements(aten.mv.default, aten.dot.default)
def mv(x: Any, y: Any) -> MPCTensor:
    return bilinear_values("matmul", x, y, find_party(x, y))


@implements(aten.addmm.default, aten.baddbmm.default)
def addmm(bias: Any, x: Any, y: Any, *, beta: Any = 1, alpha: Any = 1) -> MPCTensor:
    """``beta * bias + alpha * (x @ y)`` (``nn.Linear`` on 2-D input)."""
    party = find_party(bias, x, y)
    prod = scale_value(bilinear_values("matmul", x, y, party), alpha, party)
    return add_values(prod, scale_value(bias, beta, party), party)


@implements(aten.addmv.default)
def addmv(bias: Any, x: Any, y: Any, *, beta: Any = 1, alpha: Any = 1) -> Any:
    return addmm(bias, x, y, beta=beta, alpha=alpha)


def _tuple(value: Sequence[int] | int, n: int) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    out = [int(v) for v in value]
    return out * n if len(out) == 1 else out


def _conv_op(ndim: int, transposed: bool, party: Party) -> str:
    if ndim not in (1, 2):
        raise unsupported(f"{ndim + 2}-d convolution (only conv1d/conv2d are supported)", party)
    return f"conv_transpose{ndim}d" if transposed else f"conv{ndim}d"


def _bias_view(bias: Any, ndim: int) -> Any:
    return bias.reshape((1, -1) + (1,) * ndim) if isinstance(bias, torch.Tensor) else bias


def _check_convolution(x: Any, *args: Any) -> str | None:
    if x.dim() not in (3, 4):
        return f"{x.dim() - 2}-d convolution (only 1-d and 2-d are supported)"
    return None


@implements(aten.convolution.default, check=_check_convolution)
def convolution(
    x: Any,
    weight: Any,
    bias: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
) -> MPCTensor:
    """``conv{1,2}d`` / ``conv_transpose{1,2}d``: one Beaver product (local with a public side)."""
    party = find_party(x, weight, bias)
    nd = x.dim() - 2
    op = _conv_op(nd, transposed, party)
    params: dict[str, Any] = {
        "stride": _tuple(stride, nd),
        "padding": _tuple(padding, nd),
        "dilation": _tuple(dilation, nd),
        "groups": int(groups),
    }
    if transposed:
        params["output_padding"] = _tuple(output_padding, nd)
    out = bilinear_values(op, x, weight, party, params)
    if bias is not None:
        out = add_values(out, _bias_view(bias, nd), party)
    return out


def conv_weight_grad(
    x: Any,
    grad: Any,
    kernel: Sequence[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    party: Party,
) -> Any:
    """Weight gradient of ``conv(x, w)`` for output gradient ``grad``, as one convolution.

    Shapes: ``x`` ``(N, Cin, *in)``, ``grad`` ``(N, Cout, *out)``; returns ``(Cout, Cin/G, *k)``.
    """
    nd = x.dim() - 2
    n, cin = x.shape[0], x.shape[1]
    g = groups
    # x[n, g*cg + i, ...] -> xs[i, g*N + n, ...]
    xs = x.reshape(n, g, cin // g, *x.shape[2:]).permute(2, 1, 0, *range(3, 3 + nd))
    xs = xs.reshape(cin // g, g * n, *x.shape[2:])
    # grad[n, g*og + o, ...] -> gs[g*og + o, n, ...]
    gs = grad.transpose(0, 1)
    params = {"stride": dilation, "padding": padding, "dilation": stride, "groups": g}
    out: Any = bilinear_values(f"conv{nd}d", xs, gs, party, params)  # (Cin/G, Cout, *k')
    out = out.transpose(0, 1)
    for d, k in enumerate(kernel):
        if out.shape[2 + d] != k:
            out = out.narrow(2 + d, 0, k)
    return out.contiguous()


@implements(aten.convolution_backward.default)
def convolution_backward(
    grad: Any,
    x: Any,
    weight: Any,
    bias_sizes: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[Any, Any, Any]:
    """Gradients of a convolution for input, weight and bias (those ``output_mask`` asks for)."""
    party = find_party(grad, x, weight)
    nd = x.dim() - 2
    st, pd, dl = _tuple(stride, nd), _tuple(padding, nd), _tuple(dilation, nd)
    kernel = list(weight.shape[2:])
    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        if not transposed:
            # Output padding makes the transposed convolution land exactly on the input size.
            extra = [
                x.shape[2 + d]
                - ((grad.shape[2 + d] - 1) * st[d] - 2 * pd[d] + dl[d] * (kernel[d] - 1) + 1)
                for d in range(nd)
            ]
            params = {
                "stride": st,
                "padding": pd,
                "output_padding": extra,
                "groups": int(groups),
                "dilation": dl,
            }
            grad_input = bilinear_values(f"conv_transpose{nd}d", grad, weight, party, params)
        else:
            params = {"stride": st, "padding": pd, "dilation": dl, "groups": int(groups)}
            grad_input = bilinear_values(f"conv{nd}d", grad, weight, party, params)
    if output_mask[1]:
        if not transposed:
            grad_weight = conv_weight_grad(x, grad, kernel, st, pd, dl, int(groups), party)
        else:
            grad_weight = conv_weight_grad(grad, x, kernel, st, pd, dl, int(groups), party)
    if output_mask[2]:
        grad_bias = grad.sum([0, *range(2, grad.dim())])
    return grad_input, grad_weight, grad_bias


# --------------------------------------------------------------------------- embedding

_ONE_HOT = "embedding:one_hot"


def _one_hot(indices: MPCTensor, num: int) -> MPCTensor:
    """Secret one-hot rows ``[indices[..., None] == arange(num)]`` (stashed on ``indices``)."""
    cached = indices.stashed(_ONE_HOT)
    if cached is not None and cached.shape[-1] == num:
        return cached  # type: ignore[no-any-return]
    expanded = indices.unsqueeze(-1).expand(*indices.shape, num)
    hot = compare("eq", expanded, torch.arange(num))
    indices.stash(_ONE_HOT, hot)
    return hot


@implements(aten.embedding.default)
def embedding(
    weight: Any,
    indices: Any,
    padding_idx: int = -1,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> MPCTensor:
    """Rows of the weight: a gather of shares for public indices; for secret indices, an
    encrypted one-hot matrix (one comparison per index and row) times the weight."""
    party = find_party(weight, indices)
    idx = public_of(indices)
    if idx is not None:
        return share_wise(aten.embedding.default, weight, idx.long(), padding_idx)
    hot = _one_hot(indices, weight.shape[0])
    return bilinear_values("matmul", hot, weight, party)


def _check_embedding_backward(
    grad: Any, indices: Any, num_weights: int, padding_idx: int, scale_grad_by_freq: bool
) -> str | None:
    return "Embedding(scale_grad_by_freq=True)" if scale_grad_by_freq else None


@implements(aten.embedding_dense_backward.default, check=_check_embedding_backward)
def embedding_dense_backward(
    grad: Any,
    indices: Any,
    num_weights: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> MPCTensor:
    """Scatter-add the output gradient into the rows it came from (``one_hot^T @ grad`` for
    secret indices, one Beaver product)."""
    party = find_party(grad, indices)
    if scale_grad_by_freq:
        raise unsupported("Embedding(scale_grad_by_freq=True)", party)
    dim = grad.shape[-1]
    idx = public_of(indices)
    if idx is None:
        hot = _one_hot(indices, num_weights).reshape(-1, num_weights)
        out = bilinear_values("matmul", hot.t(), grad.reshape(-1, dim), party)
    else:
        flat = idx.reshape(-1).long()
        src = ring_of(grad, party).reshape(-1, dim)
        share = torch.zeros((num_weights, dim), dtype=torch.int64).index_add_(0, flat, src)
        out = wrap(share, party)
    if padding_idx >= 0:
        keep = torch.ones(num_weights, 1, dtype=torch.int64)
        keep[padding_idx] = 0
        out = wrap(out._share * keep, party)
    return out
