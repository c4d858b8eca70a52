"""Layer L2: what a dealer request is: kinds, components, sharings, and the dealer's store.

Every item the dealer hands out (a Beaver triple, a truncation pair, ...) is a list of
*components*, each secret-shared arithmetically (sum mod 2**64, :data:`ARITH`), by XOR over
int64 words (:data:`XOR`), or as XOR-shared single bits (:data:`BIT`). *Free* components are
uniformly random; *derived* components are functions of them (``c = a * b``).

A :class:`DealerRequest` names an item by kind and JSON-serialisable parameters; each kind is a
:class:`_Kind` (its component layout and its derivation) in the tables of
:mod:`crypten_lite.runtime.dealer.arith_kinds` and :mod:`crypten_lite.runtime.dealer.bit_kinds`. Requests come
from a peer, so every field is validated (:func:`_shape`, :func:`_handle`, :func:`_count`) and
a bad one raises :class:`~crypten_lite.errors.ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from crypten_lite.errors import ProtocolError

__all__ = [
    "ARITH",
    "BIT",
    "XOR",
    "DealerRequest",
    "DealerStore",
    "Layout",
    "Shape",
]

ARITH, XOR, BIT = "arith", "xor", "bit"
Shape = tuple[int, ...]
Layout = tuple[tuple[tuple[Shape, str], ...], tuple[tuple[Shape, str], ...]]
_MAX_STORED_ELEMENTS = 1 << 31


class DealerStore:
    """The dealer's state across requests: the masks of fixed operands, by handle.

    Bounded (``2**31`` elements in all) because requests come from a peer.
    """

    def __init__(self) -> None:
        self._masks: dict[int, torch.Tensor] = {}
        self._elements = 0

    def __len__(self) -> int:
        return len(self._masks)

    def put(self, handle: int, mask: torch.Tensor) -> None:
        if handle in self._masks:
            raise ProtocolError(f"fixed mask #{handle} is already stored")
        if self._elements + mask.numel() > _MAX_STORED_ELEMENTS:
            raise ProtocolError("the dealer stores too many fixed masks; release some")
        self._masks[handle] = mask
        self._elements += mask.numel()

    def get(self, handle: int, shape: Shape) -> torch.Tensor:
        mask = self._masks.get(handle)
        if mask is None:
            raise ProtocolError(f"no fixed mask #{handle} (never dealt, or released)")
        if tuple(mask.shape) != tuple(shape):
            raise ProtocolError(
                f"fixed mask #{handle} has shape {tuple(mask.shape)}, request says {tuple(shape)}"
            )
        return mask

    def pop(self, handle: int) -> None:
        mask = self._masks.pop(handle, None)
        if mask is not None:
            self._elements -= mask.numel()


@dataclass(frozen=True)
class DealerRequest:
    """One item of correlated randomness: a kind and its JSON-serialisable parameters."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    @staticmethod
    def from_json(obj: Any) -> DealerRequest:
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise ProtocolError(f"malformed dealer request {str(obj)[:80]!r}")
        params = {k: v for k, v in obj.items() if k != "kind"}
        return DealerRequest(obj["kind"], params)


@dataclass(frozen=True)
class _Kind:
    """How to lay out and derive one kind of item.

    ``derive(params, free_values, store)`` returns tensors the caller may update in place:
    fresh ones, or ``free_values`` themselves (which are the caller's scratch and may be
    overwritten; only ``fixed_mask`` keeps one, unmodified).
    """

    layout: Callable[[Mapping[str, Any]], tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]]
    derive: Callable[[Mapping[str, Any], list[torch.Tensor], DealerStore], list[torch.Tensor]]


def _shape(params: Mapping[str, Any], key: str) -> Shape:
    value = params.get(key)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and d >= 0 for d in value
    ):
        raise ProtocolError(f"dealer request field {key!r} is not a shape: {value!r}")
    return tuple(value)


def _handle(params: Mapping[str, Any]) -> int:
    value = params.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"dealer request field 'id' is not a handle: {value!r}")
    return value


def _count(p: Mapping[str, Any], key: str, low: int = 1, high: int = 1 << 31) -> int:
    value = p.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"dealer request field {key!r} must be an int in [{low}, {high}]")
    return value
