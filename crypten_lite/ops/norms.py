"""Layer L4: vector norms — ``x.norm()``, ``torch.linalg.vector_norm`` / ``norm``, and what is
built on them (``F.normalize``, ``F.cosine_similarity``, ``F.pairwise_distance``,
``torch.nn.utils.clip_grad_norm_``).

The value is :func:`crypten_lite.protocols.elementary.norm` over one dimension; several
dimensions are first moved to the end and flattened into one (a share-wise view, no messages).

* ``ord = 2``: one square round, a local sum, then ``sqrt`` (9 rounds for 2 parties): error
  that of ``sqrt`` (relative ``2e-4``, plus 2 ulps) on sums of squares in ``[2**-16, 2**20)``;
  a norm above ``2**10`` saturates.
* ``ord = 1``: ``sum |x|``, one comparison (4 rounds); exact up to the encoding.
* ``ord = inf`` / ``-inf``: ``max |x|`` / ``min |x|``, one comparison then a comparison tree
  (4 + 5 rounds per tree level); exact up to the encoding.

Other orders raise :class:`~crypten_lite.errors.UnsupportedOperationError` on every party.

Backward comes from torch's formulas, which run on the op table: ``ord = 1`` is ``sgn(x) * g``
(the sign stashed by ``abs``); ``ord = 2`` is ``x * (g / norm)`` with ``norm == 0`` masked (a
secret reciprocal, 15 rounds, and one comparison); ``ord = inf`` spreads ``g`` evenly over the
entries equal to the norm (comparisons and a secret division, as torch does).

``clip_grad_norm_`` on encrypted gradients: torch computes the total norm as the norm of the
per-parameter norms, then ``coef = min(1, max_norm / (total + 1e-6))`` and multiplies every
gradient by it. All of it runs on secrets — the total norm and the clip coefficient stay
encrypted (a secret reciprocal and one comparison), and no party learns whether clipping
happened. The returned total norm is encrypted too; reveal it deliberately if needed.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crypten_lite.ops._common import find_party, unsupported, wrap
from crypten_lite.ops._fixed import ring_of
from crypten_lite.protocols import elementary
from crypten_lite.protocols.comparison import abs_and_sign
from crypten_lite.protocols.reduction import min_dim
from crypten_lite.tensor import MPCTensor, implements, implements_function

aten = torch.ops.aten

__all__ = ["vector_norm"]


def _order(ord: Any) -> float:  # noqa: A002 - torch's name
    return 2.0 if ord is None else float(ord)


def _check(x: Any, ord: Any = 2, dim: Any = None, *args: Any, **kwargs: Any) -> str | None:
    p = _order(ord)
    if p in (1.0, 2.0) or math.isinf(p):
        return None
    return f"vector norm of order {p} (supported: 1, 2, inf, -inf)"


def _dims(x: MPCTensor, dim: Any) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not dims:
        return list(range(x.dim()))
    return sorted({d % max(1, x.dim()) for d in dims})


def vector_norm(x: MPCTensor, ord: Any = 2, dim: Any = None, keepdim: bool = False) -> MPCTensor:  # noqa: A002
    """``||x||_ord`` over ``dim`` (all entries when ``None``), secret."""
    party = x.party
    p = _order(ord)
    reason = _check(x, ord)
    if reason is not None:
        raise unsupported(reason, party)
    share = x._share if x.dtype == torch.float32 else x._share << party.frac_bits
    dims = _dims(x, dim)
    rest = [d for d in range(x.dim()) if d not in dims]
    moved = share.permute(*rest, *dims) if x.dim() else share.reshape(1)
    kept = [x.shape[d] for d in rest]
    flat = moved.reshape(*kept, -1).contiguous()
    if p == -math.inf:
        a, _ = abs_and_sign(flat, party)
        out, _ = min_dim(a, party, -1, False)
    else:
        out = elementary.norm(flat, party, p=p, dim=-1)
    if keepdim:
        shape = [1 if d in dims else x.shape[d] for d in range(x.dim())]
        out = out.reshape(shape)
    return wrap(out, party)


@implements(aten.linalg_vector_norm.default, check=_check)
def linalg_vector_norm(
    x: MPCTensor,
    ord: Any = 2,  # noqa: A002
    dim: Any = None,
    keepdim: bool = False,
    *,
    dtype: Any = None,
) -> MPCTensor:
    return vector_norm(x, ord, dim, keepdim)


@implements(aten.norm.Scalar, aten.norm.ScalarOpt_dim, check=_check)
def norm(x: MPCTensor, p: Any = 2, dim: Any = None, keepdim: bool = False) -> MPCTensor:
    """``torch.norm`` (``F.pairwise_distance`` calls it): the vector norm."""
    return vector_norm(x, p, dim, keepdim)


def _distances(diff: torch.Tensor, party: Any, p: Any) -> MPCTensor:
    """Norms over the last dimension of a share of differences."""
    return vector_norm(wrap(diff.contiguous(), party), p, -1)


def _check_cdist(x1: Any, x2: Any, p: Any, *args: Any) -> str | None:
    return _check(x1, p)


@implements(aten._cdist_forward.default, check=_check_cdist)
def cdist(x1: Any, x2: Any, p: Any, compute_mode: Any = None) -> MPCTensor:
    """``torch.cdist``: ``||x1[i] - x2[j]||_p`` for every pair of rows (``(.., P, R)``), as the
    vector norm of the ``P * R`` differences (memory ``P * R * M``). Forward only: its
    backward (``_cdist_backward``) is not supported."""
    party = find_party(x1, x2)
    f = party.frac_bits
    diff = ring_of(x1, party, f).unsqueeze(-2) - ring_of(x2, party, f).unsqueeze(-3)
    return _distances(diff, party, p)


@implements(aten._pdist_forward.default, check=_check)
def pdist(x: MPCTensor, p: Any = 2) -> MPCTensor:
    """``F.pdist``: norms of ``x[i] - x[j]`` for the rows ``i < j`` (row-major), forward only."""
    n = x.shape[0]
    first, second = torch.triu_indices(n, n, 1)
    share = ring_of(x, x.party, x.party.frac_bits)
    return _distances(share[first] - share[second], x.party, p)


# Kept whole at the torch level and composed of differentiable ops, so autograd gives their
# backward (torch's own ``_cdist_backward`` / ``_pdist_backward`` are not supported).
@implements_function(torch.cdist)
def cdist_function(x1: Any, x2: Any, p: float = 2.0, compute_mode: Any = None) -> Any:
    return torch.linalg.vector_norm(x1.unsqueeze(-2) - x2.unsqueeze(-3), p, dim=-1)


@implements_function(torch.pdist, torch.nn.functional.pdist)
def pdist_function(x: Any, p: float = 2.0) -> Any:
    first, second = torch.triu_indices(x.shape[0], x.shape[0], 1)
    return torch.linalg.vector_norm(x[first] - x[second], p, dim=-1)
