"""Layer L4: loss functions and their backward ops.

* ``mse_loss``: one square round; its backward is local given a public seed gradient.
* ``nll_loss`` (and so ``cross_entropy`` with class indices): labels must be public; picking the
  log-probability of each label is a gather of shares, and the backward does not depend on the
  input at all, so it is public whenever the seed gradient is. Encrypted targets go through
  ``cross_entropy`` with probability (one-hot) targets, which torch composes from ops in the
  table.
* ``binary_cross_entropy`` and ``binary_cross_entropy_with_logits`` use the log/sigmoid
  approximations of ``ops.nonlinear``.
* ``xlogy`` (``KLDivLoss``'s ``target * log(target)``): a public or secret ``y``, 0 at 0.
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, unsupported
from crypten_lite.ops._fixed import (
    add_values,
    div_values,
    mul_values,
    neg_value,
    where_values,
    wrap_public,
)
from crypten_lite.ops.approx import approx, reciprocal_value
from crypten_lite.ops.reductions import mean_value, sum_all
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["reduce_loss"]

_NONE, _MEAN, _SUM = 0, 1, 2


def reduce_loss(loss: Any, reduction: int) -> Any:
    """Apply torch's ``reduction`` code (0 none, 1 mean, 2 sum)."""
    if reduction == _NONE:
        return loss
    if reduction == _SUM:
        return sum_all(loss)
    return mean_value(loss)


@implements(aten.mse_loss.default)
def mse_loss(x: Any, target: Any, reduction: int = _MEAN) -> Any:
    """``mean((x - target)**2)``: one square round (plus one truncation for the mean)."""
    party = find_party(x, target)
    diff = add_values(x, target, party, -1)
    return reduce_loss(mul_values(diff, diff, party), reduction)


def _times_grad(value: Any, grad: Any, scale: float, party: Party) -> MPCTensor:
    """``value * grad * scale``: one truncation when ``grad`` is public (it folds in ``scale``)."""
    g_pub = public_of(grad)
    if g_pub is not None:
        return mul_values(value, g_pub.to(torch.float64) * scale, party)
    out = mul_values(value, grad, party)
    return mul_values(out, scale, party) if scale != 1 else out


@implements(aten.mse_loss_backward.default)
def mse_loss_backward(grad: Any, x: Any, target: Any, reduction: int) -> MPCTensor:
    """``2 * (x - target) * grad`` (divided by the element count for a mean)."""
    party = find_party(grad, x, target)
    diff = add_values(x, target, party, -1)
    n = x.numel() if reduction == _MEAN else 1
    return _times_grad(diff, grad, 2.0 / n, party)


def _labels(target: Any, party: Party) -> torch.Tensor:
    labels = public_of(target)
    if labels is None:
        raise unsupported(
            "nll_loss/cross_entropy with encrypted class indices: pass public labels, or "
            "encrypted one-hot (probability) targets to cross_entropy",
            party,
        )
    return labels.long()


def _label_weights(
    x: Any, labels: torch.Tensor, weight: Any, ignore_index: int, party: Party
) -> tuple[torch.Tensor, torch.Tensor]:
    """Safe labels (ignored ones set to 0) and each sample's public weight (0 if ignored)."""
    keep = labels != ignore_index
    safe = torch.where(keep, labels, torch.zeros_like(labels))
    if weight is None:
        w = keep.to(torch.float64)
    else:
        w_pub = public_of(weight)
        if w_pub is None:
            raise unsupported("nll_loss with encrypted class weights", party)
        w = w_pub.to(torch.float64)[safe] * keep
    return safe, w


def _class_dim(x: Any) -> int:
    return 0 if x.dim() == 1 else 1


def _check_nll(x: Any, target: Any, weight: Any, *args: Any) -> str | None:
    if public_of(target) is None:
        return "encrypted class indices (use public labels or encrypted one-hot targets)"
    if weight is not None and public_of(weight) is None:
        return "encrypted class weights"
    return None


def _check_nll_backward(grad: Any, x: Any, target: Any, weight: Any, *args: Any) -> str | None:
    return _check_nll(x, target, weight)


@implements(aten.nll_loss_forward.default, aten.nll_loss2d_forward.default, check=_check_nll)
def nll_loss_forward(
    x: Any, target: Any, weight: Any, reduction: int, ignore_index: int
) -> tuple[MPCTensor, MPCTensor]:
    """``-x[i, target[i]] * w[target[i]]``, reduced; the total weight is public."""
    party = find_party(x, target, weight)
    labels = _labels(target, party)
    safe, w = _label_weights(x, labels, weight, ignore_index, party)
    dim = _class_dim(x)
    picked = x.gather(dim, safe.unsqueeze(dim)).squeeze(dim)
    total = w.sum()
    w_is_one = bool((w == 1).all())
    losses = neg_value(picked) if w_is_one else mul_values(picked, -w, party)
    if reduction == _NONE:
        out = losses
    elif reduction == _SUM:
        out = sum_all(losses)
    else:
        out = (
            div_values(sum_all(losses), total.float(), party)
            if not w_is_one
            else mean_value(losses)
        )
    return out, wrap_public(total.float(), party)


@implements(
    aten.nll_loss_backward.default,
    aten.nll_loss2d_backward.default,
    check=_check_nll_backward,
)
def nll_loss_backward(
    grad: Any,
    x: Any,
    target: Any,
    weight: Any,
    reduction: int,
    ignore_index: int,
    total_weight: Any,
) -> MPCTensor:
    """``-w[t] * grad`` at each label's position: public when ``grad`` is (no dependence on x)."""
    party = find_party(grad, x, target, weight)
    labels = _labels(target, party)
    safe, w = _label_weights(x, labels, weight, ignore_index, party)
    dim = _class_dim(x)
    coef = torch.zeros(x.shape, dtype=torch.float64).scatter(dim, safe.unsqueeze(dim), 1.0)
    coef = coef * (-w).unsqueeze(dim)
    if reduction == _MEAN:
        total = public_of(total_weight)
        coef = coef / (float(total) if total is not None else float(w.sum()))
    g_pub = public_of(grad)
    if reduction != _NONE:
        if g_pub is not None:
            return wrap_public((coef * g_pub.to(torch.float64)).float(), party)
        return mul_values(grad, coef.float(), party)
    g = grad.unsqueeze(dim) if isinstance(grad, torch.Tensor) else grad
    if g_pub is not None:
        return wrap_public((coef * g_pub.to(torch.float64).unsqueeze(dim)).float(), party)
    return mul_values(g, coef.float(), party)


def _weighted(loss: MPCTensor, weight: Any, party: Party) -> MPCTensor:
    return loss if weight is None else mul_values(loss, weight, party)


@implements(aten.binary_cross_entropy.default)
def binary_cross_entropy(x: Any, target: Any, weight: Any = None, reduction: int = _MEAN) -> Any:
    """``-(t log x + (1 - t) log(1 - x))``: two logarithms, two products."""
    party = find_party(x, target, weight)
    log_x = approx("log", x)
    log_1mx = approx("log", add_values(1.0, x, party, -1))
    # t log x + (1 - t) log(1 - x) = log(1 - x) + t (log x - log(1 - x))
    inner = add_values(
        log_1mx, mul_values(target, add_values(log_x, log_1mx, party, -1), party), party
    )
    return reduce_loss(_weighted(neg_value(inner), weight, party), reduction)


@implements(aten.binary_cross_entropy_backward.default)
def binary_cross_entropy_backward(
    grad: Any, x: Any, target: Any, weight: Any = None, reduction: int = _MEAN
) -> MPCTensor:
    """``grad * (x - t) / (x (1 - x))`` (one reciprocal)."""
    party = find_party(grad, x, target, weight)
    denom = mul_values(x, add_values(1.0, x, party, -1), party)
    ratio = mul_values(add_values(x, target, party, -1), reciprocal_value(denom), party)
    n = x.numel() if reduction == _MEAN else 1
    return _weighted(_times_grad(ratio, grad, 1.0 / n, party), weight, party)


def _check_bce_logits(
    x: Any, target: Any, weight: Any = None, pos_weight: Any = None, *args: Any
) -> str | None:
    return "pos_weight" if pos_weight is not None else None


@implements(aten.binary_cross_entropy_with_logits.default, check=_check_bce_logits)
def binary_cross_entropy_with_logits(
    x: Any, target: Any, weight: Any = None, pos_weight: Any = None, reduction: int = _MEAN
) -> Any:
    """``max(x, 0) - x t + log(1 + exp(-|x|))``, the stable form torch uses.

    ``log(1 + exp(-|x|)) = -log(sigmoid(|x|))`` with ``sigmoid(|x|)`` in ``[1/2, 1]``, so the
    logarithm stays on its accurate domain for any logit (the naive ``log(sigmoid(x))``
    saturates near -12 for ``x < -8``), and ``max(x, 0) = (x + |x|) / 2`` is local once
    ``|x|`` is known. Cost: one comparison (``|x|``), one sigmoid, one log. Torch's backward
    composes ``sigmoid(x) - t``.
    """
    party = find_party(x, target, weight, pos_weight)
    if pos_weight is not None:
        raise unsupported("BCEWithLogitsLoss(pos_weight=...)", party)
    a = x.abs()
    relu_x = mul_values(add_values(x, a, party), 0.5, party)
    log_sig = approx("log", approx("sigmoid", a))
    linear = add_values(relu_x, mul_values(x, target, party), party, -1)
    return reduce_loss(_weighted(add_values(linear, log_sig, party, -1), weight, party), reduction)


def _smooth_l1(x: Any, target: Any, beta: float, party: Party) -> MPCTensor:
    """``0.5 d**2 / beta`` where ``|d| < beta``, else ``|d| - beta / 2`` (two comparisons)."""
    d = add_values(x, target, party, -1)
    a = d.abs()
    small = a < beta
    quad = mul_values(mul_values(d, d, party), 0.5 / beta, party)
    lin = add_values(a, -0.5 * beta, party)
    return where_values(small, quad, lin)


@implements(aten.smooth_l1_loss.default)
def smooth_l1_loss(x: Any, target: Any, reduction: int = _MEAN, beta: float = 1.0) -> Any:
    party = find_party(x, target)
    if beta == 0.0:
        return reduce_loss(add_values(x, target, party, -1).abs(), reduction)
    return reduce_loss(_smooth_l1(x, target, float(beta), party), reduction)


@implements(aten.smooth_l1_loss_backward.default)
def smooth_l1_loss_backward(
    grad: Any, x: Any, target: Any, reduction: int, beta: float
) -> MPCTensor:
    """``clamp(d / beta, -1, 1) * grad`` (one comparison against both bounds)."""
    party = find_party(grad, x, target)
    d = add_values(x, target, party, -1)
    slope = d.sign() if beta == 0.0 else (d * (1.0 / beta)).clamp(-1.0, 1.0)
    n = x.numel() if reduction == _MEAN else 1
    return _times_grad(slope, grad, 1.0 / n, party)


@implements(aten.huber_loss.default)
def huber_loss(x: Any, target: Any, reduction: int = _MEAN, delta: float = 1.0) -> Any:
    """``delta * smooth_l1(beta=delta)``."""
    party = find_party(x, target)
    loss = mul_values(_smooth_l1(x, target, float(delta), party), float(delta), party)
    return reduce_loss(loss, reduction)


@implements(aten.huber_loss_backward.default)
def huber_loss_backward(grad: Any, x: Any, target: Any, reduction: int, delta: float) -> MPCTensor:
    """``clamp(d, -delta, delta) * grad``."""
    party = find_party(grad, x, target)
    slope = add_values(x, target, party, -1).clamp(-float(delta), float(delta))
    n = x.numel() if reduction == _MEAN else 1
    return _times_grad(slope, grad, 1.0 / n, party)


# --------------------------------------------------------------------------- xlogy (KLDivLoss)

_LOG_FLOOR = -17.0 * 0.6931471805599453
"""``ln 2**-17``: where a public ``y`` is 0, ``log y`` saturates like the secret ``log``
(``-(f + 1) ln 2`` for ``f = 16``), so ``0 * log 0 = 0``."""


def _public_log(y: torch.Tensor) -> torch.Tensor:
    y = y.to(torch.float64)
    return torch.where(y > 0, torch.log(y.clamp(min=1e-300)), torch.full_like(y, _LOG_FLOOR))


def xlogy_value(x: Any, y: Any) -> Any:
    """``x * log(y)`` with ``0 * log(0) = 0`` (``F.kl_div``'s ``xlogy(target, target)``).

    A public ``y``: its logarithm is public (``log 0`` saturates), one local product. A secret
    ``y``: ``protocols.approximations.log`` (8 rounds; ``y <= 0`` saturates at about -11.8,
    so a zero ``x`` still gives 0 up to an ulp) and one product. Error: log's ``3.4e-5``
    absolute times ``|x|``, plus a truncation.
    """
    party = find_party(x, y)
    py = public_of(y)
    log_y = wrap_public(_public_log(py).float(), party) if py is not None else approx("log", y)
    return mul_values(x, log_y, party)


@implements(aten.xlogy.Tensor)
def xlogy(x: Any, y: Any) -> Any:
    return xlogy_value(x, y)


@implements(aten.xlogy.Scalar_Self)
def xlogy_scalar_self(x: Any, y: Any) -> Any:
    return xlogy_value(x, y)


@implements(aten.xlogy.Scalar_Other)
def xlogy_scalar_other(x: Any, y: Any) -> Any:
    return xlogy_value(x, y)
