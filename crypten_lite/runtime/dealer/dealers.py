"""Layer L2: the party side of a dealer: the :class:`Dealer` interface and the trusted first party.

Latency: :meth:`Dealer.request` hands out the free components at once and the derived ones on
demand (:class:`DealerBatch`). Party 0 of a dealer process sends its request first and collects
the reply after the protocol's opening round; party 0 of the trusted first party replays the
other parties' streams only then. Either way the dealing overlaps with the parties' round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from crypten_lite.runtime.dealer.core import _corrections, _layout, party_draw
from crypten_lite.runtime.dealer.request import DealerRequest, DealerStore, Shape
from crypten_lite.runtime.prg import PRG

__all__ = ["Dealer", "DealerBatch", "TrustedFirstParty"]


class DealerBatch:
    """The material of a batch of requests, free components first (see :meth:`Dealer.request`).

    Free components are drawn locally, so :meth:`free` is available at once; :meth:`item` (free
    then derived components) may wait for the dealer process, or (party 0 of the trusted first
    party) compute them only then. A protocol opens its masked values between the two, so the
    dealer's work and round trip overlap with the parties' round.

    Contract: do not modify the free components before :meth:`item` has been called for them
    (the trusted first party reads them to derive the rest); afterwards they are the caller's.
    """

    __slots__ = ("_free", "_items", "_finish")

    def __init__(
        self,
        free: list[list[torch.Tensor]],
        items: list[list[torch.Tensor]] | None = None,
        finish: Callable[[], list[list[torch.Tensor]]] | None = None,
    ) -> None:
        self._free = free
        self._items = items
        self._finish = finish

    def __len__(self) -> int:
        return len(self._free)

    def free(self, i: int = 0) -> list[torch.Tensor]:
        """This party's shares of item ``i``'s free components."""
        return self._free[i]

    def item(self, i: int = 0) -> list[torch.Tensor]:
        """All components of item ``i`` (waits for the dealer process the first time)."""
        return self.items()[i]

    def items(self) -> list[list[torch.Tensor]]:
        if self._items is None:
            assert self._finish is not None
            self._items, self._finish = self._finish(), None
        return self._items


class Dealer(ABC):
    """Source of correlated randomness for one party.

    ``fetch`` returns this party's shares of each requested item: free components, then derived
    components; ``request`` returns them as a :class:`DealerBatch` whose derived part may still
    be on its way. Convenience methods name the common items.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self._next_handle = 0

    @abstractmethod
    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        """This party's shares of each request's components (free first, then derived)."""

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        """Like :meth:`fetch`, but derived components may arrive later (:class:`DealerBatch`).

        Batches complete in order: completing one completes every earlier batch first.
        """
        items = self.fetch(requests)
        free = [item[: len(_layout(r)[0])] for r, item in zip(requests, items, strict=True)]
        return DealerBatch(free, items)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Tell the dealer this party is done (party 0 of a dealer process)."""

    def get(self, kind: str, **params: Any) -> list[torch.Tensor]:
        return self.fetch([DealerRequest(kind, params)])[0]

    def triple(
        self, op: str, a_shape: Shape, b_shape: Shape, op_params: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Beaver triple ``[a], [b], [c = op(a, b)]`` for a bilinear op of :mod:`~crypten_lite.runtime.ring`."""
        a, b, c = self.get(
            "triple",
            op=op,
            a_shape=list(a_shape),
            b_shape=list(b_shape),
            op_params=dict(op_params or {}),
        )
        return a, b, c

    def square(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``[a], [a*a]``."""
        a, a2 = self.get("square", shape=list(shape))
        return a, a2

    def binary_triple(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """XOR-shared ``<a>, <b>, <a & b>`` over int64 words."""
        a, b, c = self.get("binary_triple", shape=list(shape))
        return a, b, c

    def truncation_pair(
        self, shape: Shape, frac_bits: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[r], [r >> f] (logical), [msb(r)]`` with ``r`` uniform in Z_2^64."""
        r, r_hi, r_msb = self.get("trunc", shape=list(shape), frac_bits=frac_bits)
        return r, r_hi, r_msb

    def edabits(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``<r>`` (XOR words) and ``[r]`` (arithmetic) of the same uniform ``r``."""
        r_xor, r_arith = self.get("edabits", shape=list(shape))
        return r_xor, r_arith

    def random_bits(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``<b>`` (XOR of 0/1 values) and ``[b]`` of the same uniform bit ``b``."""
        b_xor, b_arith = self.get("random_bits", shape=list(shape))
        return b_xor, b_arith

    def fixed_mask(self, shape: Shape) -> tuple[int, torch.Tensor]:
        """A uniform ``[b]`` that the dealer keeps for later :meth:`fixed_triple` requests.

        Returns:
            (handle, this party's share of ``b``). Every party gets the same handle, since
            every party calls this in the same order.
        """
        handle = self._next_handle
        self._next_handle += 1
        (b,) = self.get("fixed_mask", id=handle, shape=list(shape))
        return handle, b

    def fixed_triple_request(
        self,
        op: str,
        a_shape: Shape,
        b_shape: Shape,
        handle: int,
        *,
        fixed: str = "b",
        op_params: Mapping[str, Any] | None = None,
    ) -> DealerRequest:
        """The request for :meth:`fixed_triple` (to batch it with others in :meth:`fetch`)."""
        return DealerRequest(
            "fixed_triple",
            {
                "op": op,
                "a_shape": list(a_shape),
                "b_shape": list(b_shape),
                "id": handle,
                "fixed": fixed,
                "op_params": dict(op_params or {}),
            },
        )

    def fixed_triple(
        self,
        op: str,
        a_shape: Shape,
        b_shape: Shape,
        handle: int,
        *,
        fixed: str = "b",
        op_params: Mapping[str, Any] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[m]`` fresh and ``[c]``, where ``c = op(m, b)`` (``fixed="b"``) or ``op(b, m)``
        (``fixed="a"``) with the stored mask ``b`` of ``handle``."""
        m, c = self.fetch(
            [
                self.fixed_triple_request(
                    op, a_shape, b_shape, handle, fixed=fixed, op_params=op_params
                )
            ]
        )[0]
        return m, c

    def release_fixed(self, handle: int) -> None:
        """Let the dealer forget a fixed mask (sent with the next request; no round of its own)."""
        self._release(DealerRequest("fixed_release", {"id": int(handle)}))

    def _release(self, request: DealerRequest) -> None:  # noqa: B027 - only party 0 acts
        """Forward a component-less request to the dealer side."""


class TrustedFirstParty(Dealer):
    """INSECURE dealer for tests and debugging: party 0 knows every party's dealer stream.

    Party 0 can therefore reconstruct every mask and unmask every opened value. Costs no
    messages. Never use it where party 0 must not learn the other parties' inputs.

    Unlike the dealer process, parties ``1..N-1`` draw only the free components (uniform
    shares from their streams) and hold *zero* shares of every derived component; party 0
    holds the derived values in full (``c = a * b``, thermometer codes, subset products, ...),
    computed from the replayed free draws. This saves every party one draw per derived
    component and party 0 the replay and subtraction of the other parties' derived draws. It
    is no less secure than this dealer already is: party 0 knows everything by definition, and
    a party ``i > 0`` still sees only uniform free shares and zeros, independent of any value.
    The draw order therefore differs from :class:`~crypten_lite.runtime.dealer.TrustedThirdParty`'s
    (consistently on every party); the two dealers' streams are not interchangeable.
    """

    def __init__(
        self, rank: int, world_size: int, own: PRG, all_streams: Sequence[PRG] | None
    ) -> None:
        super().__init__(rank, world_size)
        if rank == 0 and (all_streams is None or len(all_streams) != world_size):
            raise ValueError("party 0 of TrustedFirstParty needs every party's stream")
        self._own = own
        self._all = all_streams
        self._store = DealerStore()
        self._inflight: deque[DealerBatch] = deque()

    def _release(self, request: DealerRequest) -> None:
        if self.rank == 0:
            assert self._all is not None
            self._drain()
            free = party_draw(self._all[0], request, 0)[0]
            _corrections(self._all, request, free, self._store, others_derived=False)

    def _drain(self) -> None:
        while self._inflight:
            self._inflight[0].items()

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        return self.request(requests).items()

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        if self.rank != 0:
            # Free components only; the derived shares of parties 1..N-1 are zeros.
            free = [party_draw(self._own, r, self.rank, draw_derived=False)[0] for r in requests]
            return DealerBatch(
                free,
                [
                    f + [torch.zeros(shape, dtype=torch.int64) for shape, _ in _layout(r)[1]]
                    for r, f in zip(requests, free, strict=True)
                ],
            )
        # Party 0 draws its own free shares now and replays the other parties' streams only
        # when the derived shares are asked for: after the protocol has sent its masked values,
        # so the peers do not wait for the dealing. Batches complete in request order (each
        # party's stream is read in order).
        assert self._all is not None
        free = [party_draw(self._all[0], r, 0)[0] for r in requests]
        batch = DealerBatch(free, finish=lambda: self._complete(requests, free, batch))
        self._inflight.append(batch)
        return batch

    def _complete(
        self, requests: Sequence[DealerRequest], free: list[list[torch.Tensor]], batch: DealerBatch
    ) -> list[list[torch.Tensor]]:
        assert self._all is not None
        while self._inflight and self._inflight[0] is not batch:
            self._inflight[0].items()
        if self._inflight:
            self._inflight.popleft()
        return [
            f + _corrections(self._all, r, f, self._store, others_derived=False)
            for r, f in zip(requests, free, strict=True)
        ]
