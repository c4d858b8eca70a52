"""Layer L4: the in-place twins of every supported op, registered generically.

torch has an in-place variant ``aten.X_.Y`` of many ops ``aten.X.Y`` (``abs_``, ``scatter_``,
``index_add_``, ``squeeze_``, ...), and its own decompositions and backward formulas use them
(``index_select``'s backward calls ``index_add_``, ``matmul`` of a vector calls ``squeeze_``).
Rather than writing each twin by hand, this module walks the op table once all families are
registered and gives every supported op whose twin is missing a generic implementation:

* a value op (its result is a new tensor): compute the out-of-place result, then write it into
  ``self`` with :func:`crypten_lite.ops._fixed.assign` (the share buffer is overwritten, so
  views of ``self`` see the new value, and public values and stashes become stale). The cost is
  the out-of-place op's; the write is local;
* a view op (its result aliases ``self``: ``squeeze_``, ``unsqueeze_``, ``t_``, ``transpose_``,
  ``as_strided_``): the values do not change, only ``self``'s geometry. The share becomes the
  view of itself (same buffer, same alias) and the wrapper's sizes and strides are rewritten to
  match (``as_strided_`` on the wrapper, with dispatch off: the wrapper has no storage of its own).

Twins implemented by hand in the family modules (``relu_``, ``clamp_``, ``masked_fill_``, ...)
keep their own implementation. ``tests/mpc/test_ops_extra.py`` checks that every supported op with
a twin in ``torch.ops.aten`` has it registered. Import this module after every op family.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._mode_utils import no_dispatch

from crypten_lite.ops._common import share_wise
from crypten_lite.ops._fixed import assign
from crypten_lite.tensor import MPCTensor, implements
from crypten_lite.tensor_table import (
    OpOverload,
    inplace_twin,
    is_registered,
    registered_overloads,
)

aten = torch.ops.aten

__all__ = ["register_inplace_twins"]


def _is_view(op: OpOverload) -> bool:
    returns = op._schema.returns
    return len(returns) == 1 and returns[0].alias_info is not None


def _set_geometry(x: MPCTensor, share: torch.Tensor) -> None:
    """Make ``x`` describe ``share`` (a view of its own share buffer)."""
    public = x.public_value()
    x._share = share
    x._stash = {}
    if public is not None and public.shape != share.shape:
        x._pub = None
    with no_dispatch():
        torch.ops.aten.as_strided_.default(x, share.shape, share.stride(), x.storage_offset())


def _view_twin(op: OpOverload, twin: OpOverload) -> None:
    def inplace_view(x: MPCTensor, *args: Any, **kwargs: Any) -> MPCTensor:
        out = share_wise(op, x, *args, **kwargs)
        public = x.public_value()
        _set_geometry(x, out._share)
        if public is not None and out.public_value() is not None:
            x._pub = out.public_value()
        return x

    inplace_view.__name__ = f"inplace_view_{twin.__name__.replace('.', '_')}"
    inplace_view.__doc__ = f"``{twin}``: ``{op}`` applied to ``self``'s geometry (no messages)."
    implements(twin)(inplace_view)


def _value_twin(op: OpOverload, twin: OpOverload) -> None:
    def inplace(x: Any, *args: Any, **kwargs: Any) -> Any:
        return assign(x, op(x, *args, **kwargs))

    inplace.__name__ = f"inplace_{twin.__name__.replace('.', '_')}"
    inplace.__doc__ = f"``{twin}``: ``{op}``, then written into ``self`` (cost of ``{op}``)."
    implements(twin)(inplace)


def register_inplace_twins() -> list[OpOverload]:
    """Register the missing in-place twin of every supported op; returns those registered."""
    added = []
    for op in registered_overloads():
        twin = inplace_twin(op)
        if twin is None or is_registered(twin):
            continue
        if _is_view(op):
            _view_twin(op, twin)
        else:
            _value_twin(op, twin)
        added.append(twin)
    return added


TWINS = register_inplace_twins()
