"""Layer L2: dealers that record a program's requests, and serve prepared material in order.

An offline phase has three steps (the user API is :mod:`crypten_lite.preprocessing`):

1. *Record*: run the program once behind a :class:`RecordingDealer`, which passes every request
   to the session's dealer and notes it. A program's request sequence depends only on public
   shapes and settings, never on secret values, so it is the same on every party and on every
   run with inputs of the same shapes.
2. *Prepare*: :func:`prepare_material` asks the session's dealer for the whole sequence in a few
   large batches (a dealer process deals them in bulk, seed-compressed: party 0 receives one
   correction per derived element, the other parties draw their shares locally). Fixed-mask
   handles are renumbered to fresh ones, so that the prepared masks never alias the recording
   run's.
3. *Serve*: a :class:`PreparedDealer` hands the items out in order, with no message at all. Each
   request is compared with the next prepared one; the first difference raises
   :class:`PlanMismatchError` (on every party, since every party compares the same sequences),
   and from then on the store serves nothing. An item is dropped from the store when handed
   out, so a mask can never be used twice, and nothing is ever dealt again behind the
   program's back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.dealer.core import _layout
from crypten_lite.runtime.dealer.dealers import Dealer, DealerBatch
from crypten_lite.runtime.dealer.request import DealerRequest

__all__ = [
    "PlanMismatchError",
    "PreparedDealer",
    "RecordingDealer",
    "prepare_material",
    "request_key",
]

# Derived elements per bulk batch: bounds one dealer reply (8 bytes an element).
_BULK_ELEMENTS = 1 << 22


class PlanMismatchError(ProtocolError):
    """The online program asked for other dealer material than its plan prepared."""


def request_key(request: DealerRequest) -> str:
    """A request as canonical JSON text: what plans compare and store."""
    return json.dumps(request.to_json(), sort_keys=True, separators=(",", ":"))


class _Wrapper(Dealer):
    """A dealer in front of the session's dealer; fixed-mask handles stay the inner one's."""

    def __init__(self, inner: Dealer) -> None:
        # Not Dealer.__init__: that would reset the handle counter, which is the inner one's.
        self.inner = inner
        self.rank = inner.rank
        self.world_size = inner.world_size

    @property
    def _next_handle(self) -> int:
        return self.inner._next_handle

    @_next_handle.setter
    def _next_handle(self, value: int) -> None:
        self.inner._next_handle = value

    def _release(self, request: DealerRequest) -> None:
        self.inner._release(request)

    def close(self) -> None:
        self.inner.close()


class RecordingDealer(_Wrapper):
    """Passes every request to ``inner`` and records it (step 1 of the module docstring)."""

    def __init__(self, inner: Dealer) -> None:
        super().__init__(inner)
        self.requests: list[DealerRequest] = []

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        self.requests.extend(requests)
        return self.inner.fetch(requests)

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        self.requests.extend(requests)
        return self.inner.request(requests)


def _renumbered(requests: Sequence[DealerRequest], inner: Dealer) -> list[DealerRequest]:
    """The requests with every fixed mask made here given a fresh handle of ``inner``."""
    fresh: dict[int, int] = {}
    out = []
    for r in requests:
        if r.kind == "fixed_mask":
            fresh[int(r.params["id"])] = inner._next_handle
            inner._next_handle += 1
        if r.kind in ("fixed_mask", "fixed_triple") and r.params.get("id") in fresh:
            r = DealerRequest(r.kind, {**r.params, "id": fresh[int(r.params["id"])]})
        out.append(r)
    return out


def prepare_material(
    inner: Dealer, requests: Sequence[DealerRequest]
) -> tuple[list[DealerRequest], list[list[torch.Tensor]]]:
    """Deal ``requests`` in bulk from ``inner`` (step 2): (the renumbered requests, their items).

    Every batch is requested before any is collected, so a dealer process deals while party 0
    receives.
    """
    planned = _renumbered(requests, inner)
    chunks: list[list[DealerRequest]] = [[]]
    size = 0
    for r in planned:
        n = sum(math.prod(s) for s, _ in _layout(r)[1])
        if chunks[-1] and size + n > _BULK_ELEMENTS:
            chunks.append([])
            size = 0
        chunks[-1].append(r)
        size += n
    batches = [inner.request(chunk) for chunk in chunks if chunk]
    items = [item for batch in batches for item in batch.items()]
    return planned, items


class PreparedDealer(_Wrapper):
    """Serves prepared items in order, checking each request against the plan (step 3).

    Args:
        inner: the session's dealer (receives fixed-mask releases; never asked for material).
        requests: the prepared requests, in program order.
        items: this party's shares of each, free components then derived ones.
    """

    def __init__(
        self,
        inner: Dealer,
        requests: Sequence[DealerRequest],
        items: list[list[torch.Tensor]],
    ) -> None:
        super().__init__(inner)
        if len(requests) != len(items):
            raise ValueError("one item per prepared request")
        self._keys = [request_key(r) for r in requests]
        self._requests = list(requests)
        self._items: list[list[torch.Tensor] | None] = list(items)
        self.consumed = 0
        self._failed: str | None = None

    @property
    def remaining(self) -> int:
        return len(self._items) - self.consumed if self._failed is None else 0

    def _take(self, request: DealerRequest) -> list[torch.Tensor]:
        if self._failed is not None:
            raise PlanMismatchError(self._failed)
        i = self.consumed
        if i >= len(self._keys) or request_key(request) != self._keys[i]:
            planned = (
                f"item {i} of the plan is {self._keys[i][:120]}"
                if i < len(self._keys)
                else f"the plan has only {len(self._keys)} items"
            )
            self._failed = (
                f"party {self.rank}: the program diverged from its plan at dealer item {i}: it "
                f"asks for {request_key(request)[:120]}, {planned}. Prepared material is never "
                "reused or dealt again: record and prepare the program as it runs now"
            )
            self._items = []
            raise PlanMismatchError(self._failed)
        item = self._items[i]
        assert item is not None
        self._items[i] = None  # handed out once: a mask is never used twice
        self.consumed += 1
        return item

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        return [self._take(r) for r in requests]

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        items = self.fetch(requests)
        free = [item[: len(_layout(r)[0])] for r, item in zip(requests, items, strict=True)]
        return DealerBatch(free, items)

    def fixed_mask(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
        # The prepared mask's handle (renumbered at preparation), not a new one.
        i = self.consumed
        nxt: Any = self._requests[i] if self._failed is None and i < len(self._requests) else None
        if nxt is None or nxt.kind != "fixed_mask":
            return super().fixed_mask(shape)  # raises PlanMismatchError
        handle = int(nxt.params["id"])
        (b,) = self.get("fixed_mask", id=handle, shape=list(shape))
        return handle, b
