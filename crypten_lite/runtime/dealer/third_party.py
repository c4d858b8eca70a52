"""Layer L2: the dealer process: :class:`TrustedThirdParty` (party side) and :func:`serve_dealer`.

Wire format. Party 0 sends the dealer (rank ``world_size``) messages tagged ``dealer.request``,
each a 1-d uint8 tensor holding one UTF-8 JSON object (never pickle):

* ``{"seq": k, "requests": [{"kind": ..., **params}, ...], "spec": bool, "rewind": bool}`` —
  batch ``k`` (batches are numbered 0, 1, ... in the order the program asks for them).
  ``spec`` marks a *predicted* batch sent ahead of need (prefetch, below); ``rewind`` says
  that the predictions from ``k`` on were wrong: the dealer first returns its streams to where
  they stood before batch ``k``.
* ``{"release": [id, ...]}`` — forget these fixed masks.
* ``{"shutdown": true}`` — the session is over.

The dealer answers every batch message with exactly one message, in order, tagged
``dealer.reply``: a 1-d int64 tensor ``[k, status, corrections...]``; ``status`` 0 carries the
corrections (party 0's derived shares) of every requested item, flattened and concatenated in
request order; ``status`` 1 (*void*, only for a predicted batch) says the dealer did not deal
it (a prediction it could not serve, or one after such a prediction). Parties ``1..N-1`` draw
everything from their own streams and never exchange a message with the dealer after set-up.

Prefetch (no offline phase needed). A program asks for the same sequence of batches every time
it runs on inputs of the same shapes (control flow never depends on secrets), so party 0
predicts: after batch ``k`` it looks up the previous occurrence of the same batch in its history
and sends the batches that followed it then, as predicted batches, up to
:data:`PREFETCH_BATCHES` batches and :data:`PREFETCH_ELEMENTS` correction elements ahead. The
dealer deals them at once, so their corrections are already on their way (usually already
queued at party 0) when the program asks. Every batch party 0 actually asks for is compared
with the prediction sent for it; on a difference it sends the actual batch with ``rewind``: the
dealer replays its streams from a snapshot (the streams are seekable AES-CTR, so a snapshot is
a position), and party 0 drops the stale replies. So a wrong prediction costs the dealer work
and one ordinary round trip, never a wrong item and never a reused mask: every party draws its
own shares only for the batches actually asked for, in order, and the dealer's replay follows
the same order. ``fixed_mask`` (which stores a mask at the dealer) is never predicted.

Rounds. Party 0 sends requests without waiting (no round). It counts the receipt of a reply as
a round only when no other round of this party took place since the request went out: then it
waited a full dealer round trip (a ``fetch`` that needs its material at once). A reply to a
request sent before one of the parties' own rounds (a :class:`DealerBatch` completed after the
protocol's opening, or a predicted batch) arrives while the parties talk; it costs no latency of
its own as long as the dealer link is no slower than the parties' link and the dealer deals it
within that round. When the dealing takes longer (large triples, without prefetch), party 0
waits without a counted round: the wait shows in ``wait_s`` of ``dealer.reply``, and is what
prefetch removes. Bytes are counted as always, under the ``dealer.*`` tags.

Measured (2 parties + dealer process over IPC, 2026-12-03, ``benchmarks/dealer_phases.py``, a
shared 2-core machine, so wall times are loose): before this scheme party 0 counted two rounds per
dealer batch (mlp_b1 24 vs party 1's 14, lenet_b1 58 vs 36, a BERT-base layer at sequence 32 230
vs 102); now it counts party 1's on all three, with or without prefetch. What prefetch changes is
party 0's time waiting for dealer replies on a repeated forward pass: mlp_b1 20-55 ms to 0.03 ms,
lenet_b1 17-65 ms to 0.06 ms, the BERT layer 507-688 ms to 0.4 ms.

In-session serving (the replicated family, :mod:`crypten_lite.runtime.helper`): party 2 runs
:func:`serve_until_done` for parties 0 and 1 during one bridged op, with the same wire format and
a :class:`DealerState` kept across ops; party 0 ends the op with :func:`send_done`, a
``{"done": {...}}`` message (the op's outputs described; no reply). Their client does not
prefetch, so no predicted batch crosses the end of an op.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from crypten_lite.errors import PartyTimeoutError, ProtocolError
from crypten_lite.runtime.comm import Communicator
from crypten_lite.runtime.dealer.core import _layout, dealer_corrections, party_draw
from crypten_lite.runtime.dealer.dealers import Dealer, DealerBatch
from crypten_lite.runtime.dealer.request import DealerRequest, DealerStore
from crypten_lite.runtime.prg import PRG

__all__ = [
    "PREFETCH_BATCHES",
    "PREFETCH_ELEMENTS",
    "DealerState",
    "TrustedThirdParty",
    "send_done",
    "serve_dealer",
    "serve_until_done",
]


_REQUEST_TAG = "dealer.request"
_REPLY_TAG = "dealer.reply"
_OK, _VOID = 0, 1

# How far party 0 predicts ahead: batches in flight and correction elements (8 bytes each)
# they may hold in its receive queue; and how many past batches it remembers to predict from.
PREFETCH_BATCHES = 64
PREFETCH_ELEMENTS = 1 << 24
_HISTORY = 1 << 16

# Kinds the dealer never deals ahead: they change its store.
_NOT_PREDICTED = frozenset({"fixed_mask", "fixed_release", "shutdown"})


def _encode(obj: dict[str, Any]) -> torch.Tensor:
    raw = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _decode(tensor: torch.Tensor) -> dict[str, Any]:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ProtocolError("dealer request must be a 1-d uint8 tensor of JSON")
    try:
        obj = json.loads(bytes(tensor.numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"dealer request is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("dealer request must be a JSON object")
    return obj


def _batch_key(requests: Sequence[DealerRequest]) -> str:
    """The batch as JSON text: what is sent, and what predictions are compared by."""
    return json.dumps([r.to_json() for r in requests], separators=(",", ":"))


def _derived_elements(requests: Sequence[DealerRequest]) -> int:
    return sum(math.prod(s) for r in requests for s, _ in _layout(r)[1])


def _post(comm: Communicator, message: torch.Tensor) -> None:
    """Send a message to the dealer without counting a round: nobody waits on it."""
    comm._send_one(comm.dealer_rank, message, _REQUEST_TAG)
    comm._round_done()


def _collect(comm: Communicator, *, counted: bool) -> torch.Tensor:
    """Receive the dealer's next reply; a round only if ``counted`` (module docstring)."""
    reply = comm._recv_one(comm.dealer_rank, _REPLY_TAG)
    if counted:
        comm.stats._on_round(_REPLY_TAG)
    comm._round_done()
    return reply


@dataclass
class _Sent:
    """A batch message to the dealer whose reply party 0 has not read yet."""

    seq: int
    key: str
    requests: Sequence[DealerRequest]
    epoch: int  # predictions of an older epoch were abandoned: their replies are dropped
    rounds_at_send: int  # this party's round count when the message went out
    elements: int


class TrustedThirdParty(Dealer):
    """The client side of the dealer process (see the module docstring).

    Party 0 sends each batch of requests to the dealer (or finds it predicted and sent ahead)
    and receives its corrections; every other party draws everything locally and sends
    nothing.

    Args:
        prefetch: predict and request upcoming batches ahead of need (module docstring).
    """

    def __init__(
        self, rank: int, world_size: int, own: PRG, comm: Communicator, *, prefetch: bool = True
    ) -> None:
        super().__init__(rank, world_size)
        if not comm.has_dealer:
            raise ValueError("TrustedThirdParty needs a communicator connected to a dealer")
        self._own = own
        self._comm = comm
        self._closed = False
        self.prefetch = prefetch
        self._releases: list[int] = []
        self._inflight: deque[DealerBatch] = deque()
        # Party 0's bookkeeping (module docstring, "Prefetch").
        self._seq = 0  # the number of the next batch the program asks for
        self._epoch = 0
        self._sent: deque[_Sent] = deque()  # batch messages whose replies are unread
        self._ahead: deque[_Sent] = deque()  # predicted batches the program has not asked for
        self._ahead_elements = 0
        self._actual: dict[int, _Sent] = {}  # asked-for batches whose replies are unread
        self._history: list[tuple[str, Sequence[DealerRequest]]] = []
        self._last: dict[str, int] = {}  # batch key -> its latest position in the history
        self._cursor: int | None = None  # history position of the next prediction to send
        self.predicted = 0  # batches served from a prediction (party 0)
        self.mispredicted = 0  # predictions abandoned (party 0)

    def _release(self, request: DealerRequest) -> None:
        if self.rank == 0:
            self._releases.append(int(request.params["id"]))

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        return self.request(requests).items()

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        drawn = [party_draw(self._own, r, self.rank) for r in requests]
        free = [f for f, _ in drawn]
        if self.rank != 0:
            return DealerBatch(free, [f + d for f, d in drawn])
        if self._releases:
            self._post({"release": self._releases})
            self._releases = []
        requests = tuple(requests)  # kept in the history: immune to the caller's later edits
        key = _batch_key(requests)
        seq = self._seq
        self._seq += 1
        predicted = self._ahead.popleft() if self._ahead else None
        if predicted is not None:
            self._ahead_elements -= predicted.elements
        if predicted is not None and predicted.key == key:
            sent, hit = predicted, True
            self.predicted += 1
        else:
            if predicted is not None:
                self._abandon()
            sent, hit = (
                self._send(seq, key, requests, spec=False, rewind=predicted is not None),
                False,
            )
        self._actual[seq] = sent
        self._remember(key, requests, hit)
        self._predict()
        batch = DealerBatch(free, finish=lambda: self._receive(seq, free, batch))
        self._inflight.append(batch)
        return batch

    # ------------------------------------------------------------------ party 0: messages
    def _post(self, obj: dict[str, Any]) -> None:
        _post(self._comm, _encode(obj))

    def _send(
        self, seq: int, key: str, requests: Sequence[DealerRequest], *, spec: bool, rewind: bool
    ) -> _Sent:
        head = {"seq": seq, "spec": spec, "rewind": rewind, "confirmed": min(seq, self._seq)}
        raw = json.dumps(head, separators=(",", ":"))[:-1] + ',"requests":' + key + "}"
        _post(self._comm, torch.frombuffer(bytearray(raw.encode("utf-8")), dtype=torch.uint8))
        sent = _Sent(
            seq, key, requests, self._epoch, self._comm.stats.total.rounds,
            _derived_elements(requests),
        )  # fmt: skip
        self._sent.append(sent)
        return sent

    def _abandon(self) -> None:
        """Give up the predictions in flight: their replies will be dropped unread."""
        self.mispredicted += 1
        self._epoch += 1
        self._ahead.clear()
        self._ahead_elements = 0
        self._cursor = None

    def _remember(self, key: str, requests: Sequence[DealerRequest], hit: bool) -> None:
        """Append an asked-for batch to the history; after a miss, predict from the batches
        that followed its previous occurrence (if any)."""
        position = len(self._history)
        if not hit:
            last = self._last.get(key)
            self._cursor = None if last is None else last + 1
        self._history.append((key, requests))
        self._last[key] = position
        if len(self._history) > _HISTORY:  # forget the older half
            drop = _HISTORY // 2
            self._history = self._history[drop:]
            self._last = {k: i - drop for k, i in self._last.items() if i >= drop}
            if self._cursor is not None:
                self._cursor = self._cursor - drop if self._cursor >= drop else None

    def _predict(self) -> None:
        """Send predicted batches until the window is full or the history runs out."""
        if not self.prefetch:
            return
        while (
            self._cursor is not None
            and self._cursor < len(self._history)
            and len(self._ahead) < PREFETCH_BATCHES
        ):
            key, requests = self._history[self._cursor]
            if any(r.kind in _NOT_PREDICTED for r in requests):
                return
            n = _derived_elements(requests)
            if self._ahead and self._ahead_elements + n > PREFETCH_ELEMENTS:
                return
            seq = self._seq + len(self._ahead)
            self._ahead.append(self._send(seq, key, requests, spec=True, rewind=False))
            self._ahead_elements += n
            self._cursor += 1

    def _reply(self, target: _Sent) -> torch.Tensor | None:
        """Read replies up to ``target``'s; its corrections, or ``None`` if the dealer voided
        it. Replies before it belong to abandoned predictions (batches complete in order)."""
        while True:
            head = self._sent.popleft()
            blocking = head is target and self._comm.stats.total.rounds == head.rounds_at_send
            reply = _collect(self._comm, counted=blocking)
            if reply.dtype != torch.int64 or reply.dim() != 1 or reply.numel() < 2:
                raise ProtocolError("party 0: malformed dealer reply")
            if int(reply[0]) != head.seq:
                raise ProtocolError(
                    f"party 0: dealer replied to batch #{int(reply[0])}, expected #{head.seq}"
                )
            if head is not target:
                assert head.epoch != self._epoch, "dealer replies out of order"
                continue
            return reply[2:] if int(reply[1]) == _OK else None

    def _receive(
        self, seq: int, free: list[list[torch.Tensor]], batch: DealerBatch
    ) -> list[list[torch.Tensor]]:
        # Replies come in request order: complete every earlier batch first.
        while self._inflight and self._inflight[0] is not batch:
            self._inflight[0].items()
        if self._inflight:
            self._inflight.popleft()
        flat = self._reply(self._actual[seq])
        if flat is None:
            # The dealer could not deal a prediction (say, for a fixed mask released since):
            # rewind it to this batch and send this and every later asked-for batch again.
            self._abandon()
            for k in sorted(self._actual):
                old = self._actual[k]
                self._actual[k] = self._send(k, old.key, old.requests, spec=False, rewind=k == seq)
            flat = self._reply(self._actual[seq])
            if flat is None:
                raise ProtocolError(f"party 0: the dealer voided batch #{seq}, which was asked for")
        requests = self._actual.pop(seq).requests
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
            # Replies to predictions nobody asked for stay unread; the dealer stops after them.
            self._post({"shutdown": True})


def _field(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"dealer message field {key!r} is not a count: {value!r}")
    return value


def _reply_tensor(seq: int, status: int, corrections: Sequence[torch.Tensor]) -> torch.Tensor:
    head = torch.tensor([seq, status], dtype=torch.int64)
    return torch.cat([head, *(c.reshape(-1) for c in corrections)])


class DealerState:
    """The dealer's side of a session: its streams, its store and the prefetch bookkeeping.

    Kept across calls of :func:`serve_until_done` (the in-session dealer of the replicated
    family deals for many ops in one session: fixed masks and stream positions outlive an op).
    """

    def __init__(self, streams: Sequence[PRG]) -> None:
        self.store = DealerStore()
        self.current = list(streams)
        self.next_seq = 0
        self.snapshots: dict[int, list[PRG]] = {}  # streams before unconfirmed predicted batches
        self.stalled = False  # a prediction was voided: void the later ones until a rewind
        self.served = 0

    def handle(self, comm: Communicator, msg: dict[str, Any]) -> None:
        """Serve one batch or release message of party 0 (module docstring: wire format)."""
        if "release" in msg:
            ids = msg["release"]
            if not isinstance(ids, list):
                raise ProtocolError("dealer release must list handles")
            for handle in ids:
                self.store.pop(_field({"id": handle}, "id"))
            return
        seq, confirmed = _field(msg, "seq"), _field(msg, "confirmed")
        spec, rewind = msg.get("spec") is True, msg.get("rewind") is True
        items = msg.get("requests")
        if not isinstance(items, list):
            raise ProtocolError("dealer batch must list its requests")
        requests = [DealerRequest.from_json(item) for item in items]
        for k in [k for k in self.snapshots if k < confirmed]:
            del self.snapshots[k]
        if rewind:
            if seq in self.snapshots:
                self.current = self.snapshots[seq]
            elif seq != self.next_seq:
                raise ProtocolError(
                    f"dealer: cannot rewind to batch #{seq} (next is #{self.next_seq})"
                )
            for k in [k for k in self.snapshots if k >= seq]:
                del self.snapshots[k]
            self.next_seq, self.stalled = seq, False
        unservable = any(r.kind in _NOT_PREDICTED for r in requests)
        if spec and (self.stalled or seq != self.next_seq or unservable):
            self.stalled = True
            comm.send(0, _reply_tensor(seq, _VOID, []), _REPLY_TAG)
            return
        if seq != self.next_seq:
            raise ProtocolError(f"dealer: batch #{seq} out of order (expected #{self.next_seq})")
        if spec:
            snapshot = [s.fork() for s in self.current]
            try:
                corrections = self._deal(requests)
            except Exception:  # noqa: BLE001 - a prediction the dealer cannot serve is voided
                self.current, self.stalled = snapshot, True
                comm.send(0, _reply_tensor(seq, _VOID, []), _REPLY_TAG)
                return
            self.snapshots[seq] = snapshot
        else:
            corrections = self._deal(requests)
        comm.send(0, _reply_tensor(seq, _OK, corrections), _REPLY_TAG)
        self.next_seq += 1
        self.served += len(requests)

    def _deal(self, requests: Sequence[DealerRequest]) -> list[torch.Tensor]:
        return [c for r in requests for c in dealer_corrections(self.current, r, self.store)[1]]


def _next_message(comm: Communicator, idle_timeout_s: float | None) -> dict[str, Any]:
    """Party 0's next message, waiting up to ``idle_timeout_s`` (``None``: forever)."""
    idle = 0.0
    while True:
        try:
            return _decode(comm.recv(0, _REQUEST_TAG))
        except PartyTimeoutError:
            idle += comm.timeout_s
            if idle_timeout_s is not None and idle >= idle_timeout_s:
                raise


def serve_dealer(
    comm: Communicator, streams: Sequence[PRG], *, idle_timeout_s: float | None = None
) -> int:
    """Run the dealer: answer party 0's messages until it says ``shutdown``.

    Predicted batches are dealt from a snapshot of the streams (their positions), kept until
    party 0 confirms the prediction or rewinds to it (module docstring).

    Args:
        comm: the dealer's communicator (rank ``world_size``).
        streams: the dealer's PRG with each party, indexed by rank.
        idle_timeout_s: give up after this long without a request (``None``: wait forever; the
            launcher stops the dealer when the parties exit).

    Returns:
        The number of items served (predicted items abandoned later included).
    """
    state = DealerState(streams)
    while True:
        msg = _next_message(comm, idle_timeout_s)
        if msg.get("shutdown") is True:
            return state.served
        if "done" in msg:
            raise ProtocolError("the dealer process got an in-session 'done' message")
        state.handle(comm, msg)


def send_done(dealer: TrustedThirdParty, params: dict[str, object]) -> None:
    """Party 0: collect every outstanding reply, then tell the in-session dealer the op is over.

    Pending releases go first, as they would before the next batch. No reply comes back.
    """
    if dealer.rank != 0:
        return
    while dealer._inflight:
        dealer._inflight[0].items()
    if dealer._releases:
        dealer._post({"release": dealer._releases})
        dealer._releases = []
    dealer._post({"done": params})


def serve_until_done(
    comm: Communicator, state: DealerState, *, idle_timeout_s: float | None = None
) -> dict[str, object]:
    """Serve party 0's messages as :func:`serve_dealer` does, until a ``done`` message.

    The in-session dealer of the replicated family (:mod:`crypten_lite.runtime.helper`): party 2 deals
    for parties 0 and 1 during one bridged op. Their client runs without prefetch, so no
    predicted batch crosses the end of an op.

    Args:
        comm: the dealer side of a communicator view (rank ``world_size``).
        state: the dealer's state, kept across ops.
        idle_timeout_s: give up after this long without a request (``None``: wait forever).

    Returns:
        The ``done`` message's parameters (party 0's description of the op's outputs).
    """
    while True:
        msg = _next_message(comm, idle_timeout_s)
        if "done" in msg:
            done = msg["done"]
            if not isinstance(done, dict):
                raise ProtocolError("the in-session dealer got a malformed 'done' message")
            return done
        if msg.get("shutdown") is True:
            raise ProtocolError("the in-session dealer got a shutdown in the middle of a session")
        state.handle(comm, msg)
