"""Layer L4: layer, batch and RMS normalisation (and ``F.normalize``), forward and backward.

All normalise ``x_hat = (x - mean) * rstd`` with ``rstd = 1 / sqrt(var + eps)`` over some
dimensions. A secret input goes through :func:`crypten_lite.protocols.moments.standardize`:
exact centring (``n x - sum x``), a coarse bucket of ``var + eps`` by one comparison per row,
the variance recomputed at the scale that bucket needs and ``eps`` added at that scale, so
standard deviations from about ``5e-4`` to ``5e4`` (768 features; see ``standardize_domain``)
and any ``eps`` (``1e-12``, ``1e-5``: below one ulp) give ``x_hat`` within ``2e-4``, in 12
rounds as before (2 parties, local truncation; 13 with the exact default). LayerNorm's weight
is multiplied inside the standardisation with exact truncation (no product round of its
own: ``F.layer_norm`` with an affine 13 rounds, 16 before). Running statistics in eval mode use ``rsqrt(running_var + eps)``
at scale ``f``: ``eps`` is then rounded to a multiple of ``2**-16`` (``1e-5`` -> ``1.5e-5``),
which matters only for running variances below about ``1e-2``; public statistics (a plaintext
model in eval mode) cost products only. The backward passes are the textbook formulas

    grad_x = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),   g = grad_out * weight

(training statistics) or ``grad_out * weight * rstd`` (running statistics), with ``x_hat``
stashed on the saved ``rstd`` so it is not recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from crypten_lite.ops._common import find_party, is_secret, public_of, unsupported, wrap
from crypten_lite.ops._fixed import encode_operand, wrap_public
from crypten_lite.ops.approx import _share_f, rsqrt_value
from crypten_lite.protocols import moments
from crypten_lite.protocols.truncation import resolve_method
from crypten_lite.tensor import MPCTensor, implements, implements_function

aten = torch.ops.aten

__all__: list[str] = []

_XHAT = "norm:x_hat"


def _rsqrt(v: Any) -> Any:
    pub = public_of(v)
    if pub is not None:
        return torch.rsqrt(pub.to(torch.float64)).float()
    return rsqrt_value(v)


def _normalise(
    x: Any, dims: list[int], eps: float, *, need_var: bool = True, center: bool = True
) -> tuple[Any, Any, Any, Any]:
    """``(x_hat, mean, rstd, var)``, biased variance over ``dims`` (kept as size-1 dims).

    A secret ``x`` goes through :func:`crypten_lite.protocols.moments.standardize`: exact
    centring, the variance at the scale its bucket needs and ``eps`` added at that scale, so
    any ``eps`` (``1e-12``, ``1e-5``: below one ulp ``2**-16``) means what it means in torch, and
    ``x_hat`` keeps a relative error near ``1e-5`` for variances over the domain of
    ``standardize_domain(n)`` (standard deviations about ``5e-4 .. 5e4`` for ``n = 768``).
    ``var`` is ``None`` without ``need_var`` (LayerNorm does not use it). ``center=False``:
    RMS normalisation (``x`` not centred, ``var`` the mean square).
    """
    pub = public_of(x)
    if pub is not None:
        party = find_party(x)
        xd = pub.to(torch.float64)
        mean = xd.mean(dims, keepdim=True)
        xc = xd - mean if center else xd
        var = (xc**2).mean(dims, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        outs = [xc * rstd, mean, rstd, var]
        return tuple(wrap_public(t.float(), party) for t in outs)  # type: ignore[return-value]
    party = x.party
    res = moments.standardize(_share_f(x), party, dims, eps, need_var=need_var, center=center)
    var_out = wrap(res.var, party) if res.var is not None else None
    assert res.x_hat is not None  # no weight given: x_hat is always computed
    return wrap(res.x_hat, party), wrap(res.mean, party), wrap(res.rstd, party), var_out


def _affine(xhat: Any, weight: Any, bias: Any, shape: Sequence[int]) -> Any:
    out = xhat
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _keep_xhat(rstd: Any, xhat: Any) -> None:
    if isinstance(rstd, MPCTensor):
        rstd.stash(_XHAT, xhat)


def _xhat(x: Any, mean: Any, rstd: Any, shape: Sequence[int] | None = None) -> Any:
    cached = rstd.stashed(_XHAT) if isinstance(rstd, MPCTensor) else None
    if cached is not None:
        return cached
    if shape is not None:
        mean, rstd = mean.reshape(shape), rstd.reshape(shape)
    return (x - mean) * rstd


# --------------------------------------------------------------------------- layer norm


@implements(aten.native_layer_norm.default)
def native_layer_norm(
    x: Any, normalized_shape: Sequence[int], weight: Any, bias: Any, eps: float
) -> tuple[Any, Any, Any]:
    """Returns ``(out, mean, rstd)``, statistics shaped ``x.shape[:axis] + (1,) * k``."""
    axis = x.dim() - len(normalized_shape)
    dims = list(range(axis, x.dim()))
    fused = _fused_affine(x, dims, weight, eps, list(normalized_shape))
    if fused is not None:
        scaled, xhat, mean, rstd = fused
        if xhat is not None:
            _keep_xhat(rstd, xhat)
        return _affine(scaled, None, bias, list(normalized_shape)), mean, rstd
    xhat, mean, rstd, _ = _normalise(x, dims, eps, need_var=False)
    _keep_xhat(rstd, xhat)
    out = _affine(xhat, weight, bias, list(normalized_shape))
    return out, mean, rstd


def _fused_affine(
    x: Any, dims: list[int], weight: Any, eps: float, shape: list[int]
) -> tuple[Any, Any, Any, Any] | None:
    """``(x_hat * weight, x_hat or None, mean, rstd)`` with the weight multiplied inside the
    standardisation (:func:`crypten_lite.protocols.moments.standardize`, ``weight``): no
    product and truncation round of its own. Only for a secret ``x`` with exact truncation;
    ``x_hat`` is computed only when autograd may need it. ``None``: not applicable."""
    if weight is None or not is_secret(x) or resolve_method(x.party) == "local":
        return None
    party = x.party
    w_pub = public_of(weight)
    if w_pub is not None:
        w = encode_operand(w_pub.reshape(shape), party.frac_bits, party)
    elif isinstance(weight, MPCTensor) and weight.dtype == torch.float32:
        w = _share_f(weight).reshape(shape)
    else:
        return None
    need = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    res = moments.standardize(
        _share_f(x),
        party,
        dims,
        eps,
        need_var=False,
        weight=w,
        weight_public=w_pub is not None,
        need_x_hat=need,
    )
    assert res.scaled is not None
    xhat = wrap(res.x_hat, party) if res.x_hat is not None else None
    return wrap(res.scaled, party), xhat, wrap(res.mean, party), wrap(res.rstd, party)


def _sum_to(t: Any, dims: list[int]) -> Any:
    return t.sum(dims) if dims else t


@implements(aten.native_layer_norm_backward.default)
def native_layer_norm_backward(
    grad: Any,
    x: Any,
    normalized_shape: Sequence[int],
    mean: Any,
    rstd: Any,
    weight: Any,
    bias: Any,
    output_mask: Sequence[bool],
) -> tuple[Any, Any, Any]:
    axis = x.dim() - len(normalized_shape)
    dims = list(range(axis, x.dim()))
    batch = list(range(axis))
    xhat = _xhat(x, mean, rstd)
    gx = gw = gb = None
    if output_mask[0]:
        g = grad * weight if weight is not None else grad
        gx = rstd * (g - g.mean(dims, keepdim=True) - xhat * (g * xhat).mean(dims, keepdim=True))
    if output_mask[1] and weight is not None:
        gw = _sum_to(grad * xhat, batch)
    if output_mask[2] and bias is not None:
        gb = _sum_to(grad, batch)
    return gx, gw, gb


# --------------------------------------------------------------------------- batch norm


def _channel_shape(x: Any) -> list[int]:
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _reduce_dims(x: Any) -> list[int]:
    return [0, *range(2, x.dim())]


def _check_running(x: Any, running: Any, training: bool) -> None:
    if training and running is not None and is_secret(x) and not isinstance(running, MPCTensor):
        raise unsupported(
            "BatchNorm in training mode with encrypted inputs but plain running statistics "
            "(they would become secret): encrypt the model with crypten_lite.encrypt_module",
            find_party(x),
        )


@implements(aten.native_batch_norm.default)
def native_batch_norm(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Any, Any, Any]:
    """Training: batch statistics (and running averages updated in place); eval: running ones.

    Returns ``(out, save_mean, save_invstd)`` (both ``(C,)``; empty in eval mode, as torch).
    """
    shape = _channel_shape(x)
    party = find_party(x, weight, bias, running_mean, running_var)
    if training or running_mean is None:
        _check_running(x, running_mean, training)
        dims = _reduce_dims(x)
        xhat, mean, rstd, var = _normalise(x, dims, eps)
        inv = rstd.reshape(-1)
        _keep_xhat(inv, xhat)  # on the tensor autograd saves (x_hat is exact, not recomputed)
        out = _affine(xhat, weight, bias, shape)
        if training and running_mean is not None:
            n = x.numel() // x.shape[1]
            unbiased = var.reshape(-1) * (momentum * n / max(n - 1, 1))
            running_mean.mul_(1 - momentum).add_(mean.reshape(-1) * momentum)
            running_var.mul_(1 - momentum).add_(unbiased)
        return out, mean.reshape(-1), inv
    rstd = _rsqrt(running_var + eps)
    out = _affine((x - running_mean.reshape(shape)) * rstd.reshape(shape), weight, bias, shape)
    empty = wrap_public(torch.zeros(0), party)
    return out, empty, empty


@implements(aten._native_batch_norm_legit_no_training.default)
def native_batch_norm_no_training(
    x: Any, weight: Any, bias: Any, running_mean: Any, running_var: Any, momentum: float, eps: float
) -> Any:
    return native_batch_norm(x, weight, bias, running_mean, running_var, False, momentum, eps)


@implements(aten._native_batch_norm_legit.default)
def native_batch_norm_legit(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: bool,
    momentum: float,
    eps: float,
) -> Any:
    return native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)


@implements(aten.native_batch_norm_backward.default)
def native_batch_norm_backward(
    grad: Any,
    x: Any,
    weight: Any,
    running_mean: Any,
    running_var: Any,
    save_mean: Any,
    save_invstd: Any,
    train: bool,
    eps: float,
    output_mask: Sequence[bool],
) -> tuple[Any, Any, Any]:
    shape = _channel_shape(x)
    dims = _reduce_dims(x)
    if train:
        rstd = save_invstd
        xhat = _xhat(x, save_mean, rstd, shape)
        rstd = rstd.reshape(shape)
    else:
        rstd = _rsqrt(running_var + eps).reshape(shape)
        xhat = (x - running_mean.reshape(shape)) * rstd
    gx = gw = gb = None
    if output_mask[0]:
        g = grad * weight.reshape(shape) if weight is not None else grad
        if train:
            gx = rstd * (
                g - g.mean(dims, keepdim=True) - xhat * (g * xhat).mean(dims, keepdim=True)
            )
        else:
            gx = g * rstd
    if output_mask[1] and weight is not None:
        gw = (grad * xhat).sum(dims)
    if output_mask[2]:
        gb = grad.sum(dims)
    return gx, gw, gb


# --------------------------------------------------------------------------- RMS norm


class _RMSNorm(torch.autograd.Function):
    """``x * rsqrt(mean(x**2, dims) + eps)`` kept whole, so the mean square is computed at the
    scale its magnitude needs (torch decomposes ``F.rms_norm`` into ``pow``, ``mean``,
    ``rsqrt``: a mean square below one ulp would be lost). Backward:
    ``rstd * (g - x_hat * mean(g * x_hat))``."""

    @staticmethod
    def forward(ctx: Any, x: Any, dims: list[int], eps: float) -> Any:
        xhat, _, rstd, _ = _normalise(x, dims, eps, need_var=False, center=False)
        ctx.save_for_backward(xhat, rstd)
        ctx.dims = dims
        return xhat

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        xhat, rstd = ctx.saved_tensors
        inner = (grad * xhat).mean(ctx.dims, keepdim=True)
        return rstd * (grad - xhat * inner), None, None


@implements_function(F.rms_norm)
def rms_norm(
    input: Any,  # noqa: A002 - torch's name
    normalized_shape: Sequence[int],
    weight: Any = None,
    eps: float | None = None,
) -> Any:
    """``F.rms_norm``: ``x / sqrt(mean(x**2) + eps) * weight`` over the last dims, with any
    ``eps`` (default ``torch.finfo(float32).eps``, as torch) and mean squares over the domain
    of :func:`crypten_lite.protocols.moments.standardize` (RMS about ``5e-4 .. 5e4`` for 768
    features)."""
    k = len(normalized_shape)
    dims = list(range(input.dim() - k, input.dim()))
    e = torch.finfo(torch.float32).eps if eps is None else float(eps)
    out = _RMSNorm.apply(input, dims, e)  # type: ignore[no-untyped-call]
    return out * weight if weight is not None else out


@implements_function(F.normalize)
def normalize(
    input: Any,  # noqa: A002 - torch's name
    p: float = 2.0,
    dim: int = 1,
    eps: float = 1e-12,
    out: Any = None,
) -> Any:
    """``F.normalize`` with ``p = 2``: ``x / ||x||`` as the RMS normalisation over ``dim``
    divided by ``sqrt(n)`` (torch's ``max(||x||, eps)`` differs from ``||x||`` only for norms
    below ``eps``; those rows saturate, see :func:`rms_norm`). Other ``p``: torch's own
    decomposition."""
    if p != 2 or out is not None or not isinstance(input, MPCTensor):
        with torch._C.DisableTorchFunctionSubclass():
            return F.normalize(input, p, dim, eps, out)
    d = dim % input.dim()
    n = input.shape[d]
    return _RMSNorm.apply(input, [d], 0.0) * (1.0 / math.sqrt(n))  # type: ignore[no-untyped-call]
