"""Layer L4: value predicates and truth reductions — isnan/isinf/isfinite, any/all.

* ``isnan``, ``isinf``, ``isposinf``, ``isneginf`` of an encrypted tensor are all-False and
  ``isfinite`` all-True, and these results are **public** (every party knows them without a
  message): a fixed-point ring element has no NaN or infinity, so nothing about the secret is
  revealed. This is what torch's backward of ``x.max()``/``x.min()``, ``norm(p=inf)`` and
  ``torch.autograd.set_detect_anomaly(True)`` (which checks every gradient with
  ``isnan(grad).any().item()``) need; with public results those checks run on plaintext and
  never communicate. A value that overflowed the fixed-point range is *not* reported as inf:
  overflow wraps modulo 2**64 silently, as documented for every op.
* ``any``/``all`` of a secret stay **secret** (0/1, logical dtype bool): the entries are first
  made 0/1 (``x != 0``, skipped for comparison results, which already are), summed exactly at
  scale 0, then ``any = [sum > 0]`` and ``all = [sum == count]`` — one comparison, 4 rounds
  (plus 4 for ``x != 0`` on non-bool input).
* ``aten._local_scalar_dense`` (``.item()`` seen from C++) is supported for **public** encrypted
  tensors only; on a secret it raises :class:`~crypten_lite.errors.SecretLeakError` on every
  party (they all run the same call).
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.ops._common import wrap
from crypten_lite.ops._fixed import ring_of, wrap_public
from crypten_lite.ops.nonlinear import compare
from crypten_lite.ops.reductions import reduce_count
from crypten_lite.tensor import MPCTensor, implements, implements_function

aten = torch.ops.aten

__all__ = ["truth_any", "truth_all"]


def _constant(x: MPCTensor, value: bool) -> MPCTensor:
    return wrap_public(torch.full(tuple(x.shape), value, dtype=torch.bool), x.party, torch.bool)


@implements(aten.isnan.default, aten.isinf.default, aten.isposinf.default, aten.isneginf.default)
def never(x: MPCTensor) -> MPCTensor:
    """Public all-False: fixed-point values are never NaN or infinite (no messages)."""
    return _constant(x, False)


@implements(aten.isfinite.default)
def isfinite(x: MPCTensor) -> MPCTensor:
    """Public all-True: fixed-point values are always finite (no messages)."""
    return _constant(x, True)


# torch decomposes isinf/isfinite (``|x| == inf``, ``x == x``) above the dispatch table for
# some inputs, which would spend secure comparisons on a known answer: keep the calls whole.
@implements_function(
    torch.isnan, torch.Tensor.isnan, torch.isinf, torch.Tensor.isinf,
    torch.isposinf, torch.Tensor.isposinf, torch.isneginf, torch.Tensor.isneginf,
)  # fmt: skip
def never_function(x: MPCTensor) -> MPCTensor:
    return _constant(x, False)


@implements_function(torch.isfinite, torch.Tensor.isfinite)
def isfinite_function(x: MPCTensor) -> MPCTensor:
    return _constant(x, True)


def _bits(x: MPCTensor) -> MPCTensor:
    """``x`` as 0/1 at scale 0: comparison results as they are, other values ``x != 0``."""
    if x.dtype == torch.bool:
        return x
    return compare("ne", x, 0.0 if x.dtype == torch.float32 else 0)


def _count_dims(x: MPCTensor, dim: Any) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d % max(1, x.dim()) for d in dims] or list(range(x.dim()))


def _truth(x: MPCTensor, dim: Any, keepdim: bool, every: bool) -> MPCTensor:
    party = x.party
    bits = _bits(x)
    dims = _count_dims(x, dim)
    share = ring_of(bits, party, 0)
    total = share.sum(dims, keepdim=keepdim) if x.dim() else share.clone()
    counted = wrap(total, party, dtype=torch.int64)
    if every:
        return compare("eq", counted, reduce_count(x, dims if dims else None))
    return compare("gt", counted, 0)


def truth_any(x: MPCTensor, dim: Any = None, keepdim: bool = False) -> MPCTensor:
    """Secret ``any`` over ``dim`` (all when ``None``): ``[sum of bits > 0]``, 4 rounds."""
    return _truth(x, dim, keepdim, every=False)


def truth_all(x: MPCTensor, dim: Any = None, keepdim: bool = False) -> MPCTensor:
    """Secret ``all`` over ``dim`` (all when ``None``): ``[sum of bits == count]``, 4 rounds."""
    return _truth(x, dim, keepdim, every=True)


@implements(aten.any.default, aten._is_any_true.default)
def any_all(x: MPCTensor) -> MPCTensor:
    return truth_any(x)


@implements(aten.any.dim, aten.any.dims)
def any_dim(x: MPCTensor, dim: Any = None, keepdim: bool = False) -> MPCTensor:
    return truth_any(x, dim, keepdim)


@implements(aten.all.default, aten._is_all_true.default)
def all_all(x: MPCTensor) -> MPCTensor:
    return truth_all(x)


@implements(aten.all.dim, aten.all.dims)
def all_dim(x: MPCTensor, dim: Any = None, keepdim: bool = False) -> MPCTensor:
    return truth_all(x, dim, keepdim)


@implements(aten._local_scalar_dense.default)
def local_scalar_dense(x: MPCTensor) -> Any:
    """``.item()`` from C++: public values only (the public fast path answers them first)."""
    return x._leak(".item()")
