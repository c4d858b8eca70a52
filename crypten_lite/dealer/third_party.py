"""Layer L2: the dealer process: :class:`TrustedThirdParty` (party side) and :func:`serve_dealer`.

Party 0 sends each batch of requests to the dealer (rank ``world_size``) as one message, tag
``dealer.request``: a 1-d uint8 tensor holding the UTF-8 JSON list of the requests
(``[{"kind": ..., **params}, ...]``, never pickle; a ``shutdown`` request ends the dealer).
The dealer answers with one message, tag ``dealer.reply``: a 1-d int64 tensor, the corrections
(party 0's derived shares) of every requested item, flattened and concatenated in request
order. Parties ``1..N-1`` draw everything from their own streams and never exchange a message
with the dealer after set-up.

In-session serving (the replicated family, :mod:`crypten_lite.helper`): party 2 runs
:func:`serve_until_done` for parties 0 and 1 during one bridged op, with the same wire format;
party 0 ends the op with :func:`send_done`, a request list whose last item has kind
``bridge.done`` (its parameters describe the op's outputs; no reply). :class:`NoDealer` stands
in where a session has no dealer at all.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence

import torch

from crypten_lite.comm import Communicator
from crypten_lite.dealer.core import _layout, dealer_corrections, party_draw
from crypten_lite.dealer.dealers import Dealer, DealerBatch
from crypten_lite.dealer.request import DealerRequest, DealerStore
from crypten_lite.errors import PartyTimeoutError, ProtocolError
from crypten_lite.prg import PRG

__all__ = ["NoDealer", "TrustedThirdParty", "send_done", "serve_dealer", "serve_until_done"]


_REQUEST_TAG = "dealer.request"
_REPLY_TAG = "dealer.reply"
DONE_KIND = "bridge.done"


def _encode_requests(requests: Sequence[DealerRequest]) -> torch.Tensor:
    raw = json.dumps([r.to_json() for r in requests], separators=(",", ":")).encode("utf-8")
    return (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )


def _decode_requests(tensor: torch.Tensor) -> list[DealerRequest]:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ProtocolError("dealer request must be a 1-d uint8 tensor of JSON")
    try:
        items = json.loads(bytes(tensor.numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"dealer request is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ProtocolError("dealer request must be a JSON list")
    return [DealerRequest.from_json(item) for item in items]


class TrustedThirdParty(Dealer):
    """The client side of the dealer process (see the module docstring).

    Party 0 sends the batch of requests to the dealer and receives its corrections, one round
    trip; every other party draws everything locally and sends nothing.
    """

    def __init__(self, rank: int, world_size: int, own: PRG, comm: Communicator) -> None:
        super().__init__(rank, world_size)
        if not comm.has_dealer:
            raise ValueError("TrustedThirdParty needs a communicator connected to a dealer")
        self._own = own
        self._comm = comm
        self._closed = False
        self._pending: list[DealerRequest] = []
        self._inflight: deque[DealerBatch] = deque()

    def _release(self, request: DealerRequest) -> None:
        if self.rank == 0:
            self._pending.append(request)

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        return self.request(requests).items()

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        drawn = [party_draw(self._own, r, self.rank) for r in requests]
        free = [f for f, _ in drawn]
        if self.rank != 0:
            return DealerBatch(free, [f + d for f, d in drawn])
        # Pending releases have no components: they ride along in front of this batch.
        pending, self._pending = self._pending, []
        self._comm.send(
            self._comm.dealer_rank, _encode_requests([*pending, *requests]), _REQUEST_TAG
        )
        batch = DealerBatch(free, finish=lambda: self._receive(requests, free, batch))
        self._inflight.append(batch)
        return batch

    def _receive(
        self, requests: Sequence[DealerRequest], free: list[list[torch.Tensor]], batch: DealerBatch
    ) -> list[list[torch.Tensor]]:
        # Replies come in request order: complete every earlier batch first.
        while self._inflight and self._inflight[0] is not batch:
            self._inflight[0].items()
        if self._inflight:
            self._inflight.popleft()
        flat = self._comm.recv(self._comm.dealer_rank, _REPLY_TAG)
        out, offset = [], 0
        for request, f in zip(requests, free, strict=True):
            corrections = []
            for shape, _kind in _layout(request)[1]:
                n = math.prod(shape)
                corrections.append(flat[offset : offset + n].reshape(shape))
                offset += n
            out.append(f + corrections)
        if offset != flat.numel():
            raise ProtocolError(
                f"party 0: dealer reply has {flat.numel()} elements, expected {offset}"
            )
        return out

    def close(self) -> None:
        if self.rank == 0 and not self._closed:
            self._closed = True
            while self._inflight:  # collect replies nobody waited for
                self._inflight[0].items()
            self._comm.send(
                self._comm.dealer_rank, _encode_requests([DealerRequest("shutdown")]), _REQUEST_TAG
            )


def _next_requests(comm: Communicator, idle_timeout_s: float | None) -> list[DealerRequest]:
    """Party 0's next batch of requests, waiting up to ``idle_timeout_s`` (``None``: forever)."""
    idle = 0.0
    while True:
        try:
            return _decode_requests(comm.recv(0, _REQUEST_TAG))
        except PartyTimeoutError:
            idle += comm.timeout_s
            if idle_timeout_s is not None and idle >= idle_timeout_s:
                raise


def serve_dealer(
    comm: Communicator, streams: Sequence[PRG], *, idle_timeout_s: float | None = None
) -> int:
    """Run the dealer: answer party 0's requests until it says ``shutdown``.

    Args:
        comm: the dealer's communicator (rank ``world_size``).
        streams: the dealer's PRG with each party, indexed by rank.
        idle_timeout_s: give up after this long without a request (``None``: wait forever; the
            launcher stops the dealer when the parties exit).

    Returns:
        The number of items served.
    """
    served = 0
    store = DealerStore()
    while True:
        requests = _next_requests(comm, idle_timeout_s)
        if any(r.kind == "shutdown" for r in requests):
            return served
        corrections = [c for r in requests for c in dealer_corrections(streams, r, store)[1]]
        flat = (
            torch.cat([c.reshape(-1) for c in corrections])
            if corrections
            else torch.empty(0, dtype=torch.int64)
        )
        comm.send(0, flat, _REPLY_TAG)
        served += len(requests)


class NoDealer(Dealer):
    """The dealer of a session without one (the replicated family): every request raises.

    Under the replicated family an op that needs correlated randomness runs on the helper-dealer
    view of :mod:`crypten_lite.helper`, whose parties have a real dealer client; reaching this
    one means an op was classified as local (``crypten_lite.bridge``) but is not. Every party
    runs the same classification, so every party raises here alike.
    """

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        kinds = sorted({r.kind for r in requests})
        raise ProtocolError(
            f"party {self.rank}: the replicated family has no dealer, but an op ran locally "
            f"and asked for {kinds}; it must run through the helper-dealer bridge "
            "(crypten_lite.bridge)"
        )

    def _release(self, request: DealerRequest) -> None:
        pass  # nothing was dealt, nothing to forget


def send_done(dealer: TrustedThirdParty, params: dict[str, object]) -> None:
    """Party 0: collect every outstanding reply, then tell the in-session dealer the op is over.

    Pending releases ride in front of the ``bridge.done`` item, as they would in front of the
    next batch. No reply comes back.
    """
    if dealer.rank != 0:
        return
    while dealer._inflight:
        dealer._inflight[0].items()
    pending, dealer._pending = dealer._pending, []
    dealer._comm.send(
        dealer._comm.dealer_rank,
        _encode_requests([*pending, DealerRequest(DONE_KIND, params)]),
        _REQUEST_TAG,
    )


def serve_until_done(
    comm: Communicator,
    streams: Sequence[PRG],
    store: DealerStore,
    *,
    idle_timeout_s: float | None = None,
) -> dict[str, object]:
    """Serve party 0's requests as :func:`serve_dealer` does, until a ``bridge.done`` item.

    Args:
        comm: the dealer side of a communicator view (rank ``world_size``).
        streams: the dealer's PRG with each party of the view, by rank.
        store: the dealer's state, kept across ops (fixed masks outlive one op).
        idle_timeout_s: give up after this long without a request (``None``: wait forever).

    Returns:
        The parameters of the ``bridge.done`` item (party 0's description of the op's outputs).
    """
    while True:
        requests = _next_requests(comm, idle_timeout_s)
        done = requests[-1] if requests and requests[-1].kind == DONE_KIND else None
        if done is not None:
            requests = requests[:-1]
        if any(r.kind in ("shutdown", DONE_KIND) for r in requests):
            raise ProtocolError("the in-session dealer got a misplaced shutdown or done item")
        corrections = [c for r in requests for c in dealer_corrections(streams, r, store)[1]]
        if done is not None:
            if corrections:  # only component-less releases may ride along with the done item
                raise ProtocolError("party 0 asked for material in the same message as done")
            return dict(done.params)
        flat = (
            torch.cat([c.reshape(-1) for c in corrections])
            if corrections
            else torch.empty(0, dtype=torch.int64)
        )
        comm.send(0, flat, _REPLY_TAG)
