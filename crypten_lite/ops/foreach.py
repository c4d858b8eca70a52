"""Layer L4: the ``_foreach_*`` ops of ``torch.optim``'s multi-tensor path (``foreach=True``).

Each is the elementwise op applied to every tensor of a list, so it is registered as a loop over
the single-tensor op (which dispatches back to the op table, element by element): list
arguments (``Tensor[]``, ``Scalar[]``) are indexed, the others passed to every call. The
optimiser's arithmetic on encrypted parameters is then exactly that of the ``foreach=False``
path.
"""

from __future__ import annotations

from typing import Any

import torch

from crypten_lite.tensor import implements

aten = torch.ops.aten

__all__: list[str] = []

# Elementwise ops torch.optim (SGD, Adam, AdamW, RMSprop, Adagrad) and clip_grad_* use.
_BASES = [
    "add",
    "sub",
    "mul",
    "div",
    "addcmul",
    "addcdiv",
    "lerp",
    "sqrt",
    "neg",
    "exp",
    "reciprocal",
    "abs",
    "sign",
    "pow",
    "maximum",
    "clamp_min",
    "clamp_max",
    "zero",
    "copy",
    "rsqrt",
]
_VALUE_KW = {"addcmul", "addcdiv", "addcmul_", "addcdiv_"}


def _register(op: Any, base: str) -> None:
    schema = op._schema
    list_args = [isinstance(a.type, torch.ListType) for a in schema.arguments]
    names = [a.name for a in schema.arguments]
    kw_only = [a.kwarg_only for a in schema.arguments]
    target = getattr(aten, base, None)
    if target is None:  # e.g. no in-place ``maximum_``: the out-of-place op, then a copy
        functional = getattr(aten, base.rstrip("_"))

        def target(x: Any, *args: Any, **kwargs: Any) -> Any:
            return x.copy_(functional(x, *args, **kwargs))

    def foreach(*args: Any, **kwargs: Any) -> Any:
        first = args[0]
        results = []
        for i in range(len(first)):
            call_args = []
            call_kwargs = {}
            for pos, value in enumerate(args):
                item = value[i] if list_args[pos] else value
                if isinstance(item, torch.Tensor) and names[pos] == "scalars":
                    item = item[i].item() if not list_args[pos] else item
                if base.rstrip("_") in _VALUE_KW and pos == 3:
                    call_kwargs["value"] = item
                else:
                    call_args.append(item)
            for name, value in kwargs.items():
                pos = names.index(name)
                call_kwargs[name] = value[i] if list_args[pos] and not kw_only[pos] else value
            results.append(target(*call_args, **call_kwargs))
        return None if not schema.returns else results

    foreach.__name__ = f"foreach_{base}"
    foreach.__doc__ = f"``{op}``: ``aten.{base}`` on each element of the lists."
    implements(op)(foreach)


for _base in _BASES:
    for _inplace in (False, True):
        _name = f"_foreach_{_base}{'_' if _inplace else ''}"
        _packet = getattr(aten, _name, None)
        if _packet is None:
            continue
        for _overload in _packet.overloads():
            _op = getattr(_packet, _overload)
            if "out" in _overload:
                continue
            _register(_op, _base + ("_" if _inplace else ""))
