"""Layer L4: scaled dot-product attention, kept whole.

``F.scaled_dot_product_attention`` on encrypted tensors would otherwise reach the dispatch table
as a fused CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``). Two entry points keep it
in MPC form:

* a ``__torch_function__`` override (:func:`~crypten_lite.tensor.implements_function`) that runs
  the math form ``softmax(q k^T * scale + mask) v`` with ordinary torch ops, so autograd records
  the primitive ops (this catches direct user calls);
* the fused aten op and its backward (reached from inside other torch functions such as
  ``nn.MultiheadAttention``): the forward stashes the attention probabilities ``P`` on its output,
  so the backward is four matrix products and one elementwise product:
  ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - rowsum(dO * O))``,
  ``dQ = dS K * scale``, ``dK = dS^T Q * scale``.

Masks must be public (a causal mask, or a boolean/additive ``attn_mask`` tensor). Masked scores
are set to the masking sentinel ``-2**(40 - f)`` (:mod:`crypten_lite.runtime.encoding`; ``-inf`` cannot
be encoded) before the softmax, whose max subtraction and exp floor then give them exactly 0
whatever the unmasked scores are; additive float masks with ``finfo.min`` entries saturate to
the same sentinel, ``-inf`` entries are treated as boolean masks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.ops._fixed import wrap_public
from crypten_lite.protocols.arithmetic import product
from crypten_lite.runtime.encoding import mask_limit
from crypten_lite.tensor import MPCTensor, implements, implements_function

aten = torch.ops.aten

__all__ = ["MASKED_SCORE", "attention_math"]

MASKED_SCORE = -float(2**24)
"""Score given to masked positions at ``f = 16``: the masking sentinel ``-2**(40 - f)``
(:func:`crypten_lite.runtime.encoding.mask_limit`), far below any score the softmax must keep apart
from it (a fixed -64 failed when every unmasked score was below -40)."""

_PROBS = "attention:P"


def _mask_scores(
    scores: Any, attn_mask: Any, is_causal: bool, q: Any, k: Any
) -> tuple[Any, torch.Tensor | None]:
    """Masked scores, and the public rows that mask every key (``None`` if there are none):
    torch's SDPA returns 0 for those rows (``-inf``/boolean masks), so the caller zeroes them."""
    L, S = q.shape[-2], k.shape[-2]
    keep: torch.Tensor | None = None
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool).tril()
    if attn_mask is not None:
        mask = public_of(attn_mask)
        if mask is None:
            raise unsupported(
                "scaled_dot_product_attention with an encrypted attn_mask", find_party(q, k)
            )
        if mask.dtype == torch.bool:
            keep = mask if keep is None else keep & mask
        else:
            finite = torch.isfinite(mask)
            scores = scores + torch.where(finite, mask, torch.zeros_like(mask))
            keep = finite if keep is None else keep & finite
    if keep is not None:
        f = next((t.party.frac_bits for t in (scores, q, k) if isinstance(t, MPCTensor)), 16)
        scores = scores.masked_fill(~keep, -mask_limit(f))
        dead = ~keep.any(-1, keepdim=True)
        return scores, (dead if bool(dead.any()) else None)
    return scores, None


def _power_of_two_shift(scale: float) -> int | None:
    """``s`` with ``scale = 2**-s`` (``0 <= s <= 16``), else ``None``."""
    mant, expo = math.frexp(scale)
    shift = 1 - expo
    return shift if mant == 0.5 and 0 <= shift <= 16 else None


def _scores(q: Any, k: Any, scale: float) -> Any:
    """``q k^T * scale``.

    With two secret fixed-point operands, autograd not recording, and ``scale = 2**-s`` (head
    dimensions 1, 4, 16, 64, 256, ...), the scale is a shift folded into the product's one
    truncation (by ``f + s`` bits): one Beaver round and one truncation, where the matmul and
    the public multiply each truncate (one round each with the exact default). Otherwise the
    plain torch ops (recorded by autograd)."""
    shift = _power_of_two_shift(scale)
    if (
        shift is not None
        and isinstance(q, MPCTensor)
        and isinstance(k, MPCTensor)
        and public_of(q) is None
        and public_of(k) is None
        and q.dtype == k.dtype == torch.float32
        and q.frac_bits == k.frac_bits == q.party.frac_bits
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))
    ):
        party = q.party
        kt = k._share.transpose(-2, -1).contiguous()
        z = product(
            "matmul",
            q._share.contiguous(),
            kt,
            party,
            shift=party.frac_bits + shift,
            tag="attention.scores",
        )
        return wrap(z, party)
    return (q @ k.transpose(-2, -1)) * scale


def attention_math(
    q: Any,
    k: Any,
    v: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[Any, Any]:
    """``(softmax(q k^T * scale + mask) v, P)`` with torch ops (recorded by autograd when
    called outside the dispatch table)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = _scores(q, k, scale)
    scores, dead = _mask_scores(scores, attn_mask, is_causal, q, k)
    probs = torch.softmax(scores, dim=-1)
    if dead is not None:  # rows with every key masked: 0, as torch's SDPA (public, local)
        probs = probs.masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p, training=True)
    return probs @ v, probs


@implements_function(F.scaled_dot_product_attention)
def scaled_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Any:
    """``F.scaled_dot_product_attention`` in math form (see the module docstring)."""
    if enable_gqa and query.shape[-3] != key.shape[-3]:
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], -3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], -3)
    return attention_math(query, key, value, attn_mask, dropout_p, is_causal, scale)[0]


@implements(aten._scaled_dot_product_flash_attention_for_cpu.default)
def flash_attention_cpu(
    query: Any,
    key: Any,
    value: Any,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    attn_mask: Any = None,
    scale: float | None = None,
) -> tuple[Any, Any]:
    """The fused kernel's contract in math form. The second output (``logsumexp``, used only
    by torch's own fused backward) is a public zero placeholder; ``P`` is stashed instead."""
    party = find_party(query, key, value)
    if dropout_p > 0.0:
        raise unsupported("fused attention with dropout (call it in eval mode)", party)
    out, probs = attention_math(query, key, value, attn_mask, 0.0, is_causal, scale)
    if isinstance(out, MPCTensor):
        out.stash(_PROBS, probs)
    lse = wrap_public(torch.zeros(query.shape[:-1]), party)
    return out, lse


@implements(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)
def flash_attention_cpu_backward(
    grad_out: Any,
    query: Any,
    key: Any,
    value: Any,
    out: Any,
    logsumexp: Any,
    dropout_p: float,
    is_causal: bool,
    *,
    attn_mask: Any = None,
    scale: float | None = None,
) -> tuple[Any, Any, Any]:
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    probs = out.stashed(_PROBS) if isinstance(out, MPCTensor) else None
    if probs is None:
        probs = attention_math(query, key, value, attn_mask, 0.0, is_causal, scale)[1]
    d_value = probs.transpose(-2, -1) @ grad_out
    d_probs = grad_out @ value.transpose(-2, -1)
    row = (grad_out * out).sum(-1, keepdim=True)
    d_scores = probs * (d_probs - row)
    d_query = (d_scores @ key) * scale
    d_key = (d_scores.transpose(-2, -1) @ query) * scale
    return d_query, d_key, d_value
