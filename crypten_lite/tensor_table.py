"""Layer L4: the dispatch tables of :class:`~crypten_lite.tensor.MPCTensor`.

Every aten op that reaches ``MPCTensor.__torch_dispatch__`` is looked up in a table filled by
:func:`implements` (``crypten_lite/ops/``, one module per op family); an op not in the table is
an error, never a torch kernel run on a share. :func:`implements_function` registers the few
torch-level calls that ``MPCTensor.__torch_function__`` keeps whole. The ``ops`` modules fill
both tables when they are imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "OpEntry",
    "OpOverload",
    "implements",
    "implements_function",
    "inplace_twin",
    "is_registered",
    "registered_ops",
    "registered_overloads",
]

OpOverload = torch._ops.OpOverload


@dataclass(frozen=True)
class OpEntry:
    """One row of the dispatch table.

    Attributes:
        impl: ``impl(*args, **kwargs)`` with the aten op's arguments; returns what the op returns.
        check: optional ``check(*args, **kwargs) -> reason | None``: a reason string means this
            call's arguments are not supported (checked before ``impl`` and by ``check_model``).
        family: the module that implements it (``crypten_lite.ops.<family>``).
        public_fast: when every encrypted operand is public, compute the op on the plaintexts
            (every party gets the same public result, no messages). On by default for ops that
            neither write nor alias their inputs.
    """

    impl: Callable[..., Any]
    check: Callable[..., str | None] | None
    family: str
    public_fast: bool


_OPS: dict[OpOverload, OpEntry] = {}
_FUNCTIONS: dict[Callable[..., Any], Callable[..., Any]] = {}


def _is_functional(op: OpOverload) -> bool:
    schema = op._schema
    # ``empty`` factories (new_empty_strided, which autograd uses to accumulate gradients,
    # empty_like, ...) are functional, but their plaintext result is uninitialised memory,
    # which may not even be encodable: they always run their MPC implementation (zeros).
    if "empty" in op.overloadpacket.__name__:
        return False
    return not schema.is_mutable and all(r.alias_info is None for r in schema.returns)


def implements(
    *ops: OpOverload,
    check: Callable[..., str | None] | None = None,
    public_fast: bool | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as the MPC implementation of the given aten op overloads.

    Args:
        check: see :class:`OpEntry`.
        public_fast: see :class:`OpEntry`; pass ``False`` for random ops.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for op in ops:
            if not isinstance(op, OpOverload):
                raise TypeError(f"register aten overloads (aten.add.Tensor), not {op!r}")
            if op in _OPS:
                raise RuntimeError(f"{op} is registered twice")
            fast = _is_functional(op) if public_fast is None else public_fast
            _OPS[op] = OpEntry(fn, check, fn.__module__.rsplit(".", 1)[-1], fast)
        return fn

    return register


def implements_function(
    *funcs: Callable[..., Any],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` to replace a torch-level function whole when an argument is encrypted.

    ``fn`` composes other torch ops (which autograd records as usual); use it where the aten
    decomposition torch would pick has no good MPC form (fused attention kernels).
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for f in funcs:
            _FUNCTIONS[f] = fn
        return fn

    return register


def registered_ops() -> dict[str, str]:
    """``{aten op name: family}`` of every supported op."""
    return {str(op): entry.family for op, entry in sorted(_OPS.items(), key=lambda kv: str(kv[0]))}


def registered_overloads() -> list[OpOverload]:
    """Every aten overload with an MPC implementation (a snapshot, safe to iterate)."""
    return list(_OPS)


def is_registered(op: OpOverload) -> bool:
    """Whether ``op`` has an MPC implementation."""
    return op in _OPS


# Ops whose out-of-place overload has a different name than the in-place twin.
_TWIN_OVERLOADS = {("transpose", "int"): "default", ("floor_divide", "default"): "Tensor"}


def inplace_twin(op: OpOverload) -> OpOverload | None:
    """The in-place twin ``aten.X_.Y`` of an out-of-place ``aten.X.Y``, if torch has one.

    torch names in-place variants by a trailing underscore with the same overload name
    (``aten.abs.default`` -> ``aten.abs_.default``, ``aten.scatter.src`` -> ``aten.scatter_.src``);
    the twin writes the result into its first argument ``self``. Ops that already end in ``_``,
    private ``_foo`` ops and ``out=`` variants have none.
    """
    packet = op.overloadpacket.__name__
    if packet.endswith("_") or packet.startswith("_"):
        return None
    twin_packet = getattr(torch.ops.aten, packet + "_", None)
    if twin_packet is None:
        return None
    overload = _TWIN_OVERLOADS.get((packet, op._overloadname), op._overloadname)
    if overload not in twin_packet.overloads():
        return None
    twin = getattr(twin_packet, overload)
    schema = twin._schema
    # A true in-place twin mutates its first argument and returns it.
    if not schema.arguments or schema.arguments[0].alias_info is None:
        return None
    if not schema.arguments[0].alias_info.is_write:
        return None
    return twin  # type: ignore[no-any-return]
