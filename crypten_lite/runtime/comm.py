"""Layer L2: the ``Communicator`` interface, its statistics and the in-process transport.

A communicator connects this party to the other ``world_size - 1`` parties and, when the session
has one, to the dealer (whose rank is ``world_size``). Every message is one tensor with a header
(:mod:`crypten_lite.runtime.wire`): the sender's per-pair sequence number and the op tag are checked on
receipt, so parties that run different op sequences fail with a clear
:class:`~crypten_lite.errors.ProtocolError` instead of computing garbage.

Concrete transports implement two primitives, ``_post`` (queue a message, never block on the
peer) and ``_fetch`` (wait for the next message from one peer). Every collective below posts all
of its messages before it fetches any, so one call is one round of latency for any number of
parties.
"""

from __future__ import annotations

import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from crypten_lite.errors import PartyFailedError, PartyTimeoutError, ProtocolError
from crypten_lite.runtime.wire import (
    Header,
    decode_header,
    encode_header,
    tensor_from_payload,
    tensor_payload,
)

# The tag of the notice a party sends when its input to a sharing failed and its peers
# expected no message (protocols.sharing.abort_share): a receive that meets it stops cleanly.
FAILURE_NOTICE = "share.failed"

__all__ = [
    "FAILURE_NOTICE",
    "CommStats",
    "Communicator",
    "InProcessCommunicator",
    "InProcessHub",
    "OpStats",
]


@dataclass
class OpStats:
    """Counters for one op tag (or for everything)."""

    rounds: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wait_s: float = 0.0

    def add(self, other: OpStats) -> None:
        self.rounds += other.rounds
        self.messages_sent += other.messages_sent
        self.messages_received += other.messages_received
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received
        self.wait_s += other.wait_s

    def as_dict(self) -> dict[str, float]:
        return {
            "rounds": self.rounds,
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "wait_s": self.wait_s,
        }


@dataclass
class CommStats:
    """Communication counters of one party, in total and per op tag.

    ``rounds`` counts communicator calls this party took part in (a call posts all its messages
    before waiting, so it costs one network latency). Bytes count tensor payload only, the number
    comparable with protocol cost formulas; ``header_bytes`` counts the framing on top.

    ``dealer`` is the part of ``total`` exchanged with the dealer process (on the dealer itself:
    everything), whatever its tags: the offline material's cost, kept apart so that
    :attr:`parties` is the online protocol's own traffic between parties.
    """

    total: OpStats = field(default_factory=OpStats)
    by_tag: dict[str, OpStats] = field(default_factory=dict)
    header_bytes: int = 0
    dealer: OpStats = field(default_factory=OpStats)

    @property
    def parties(self) -> OpStats:
        """``total`` less the dealer link: traffic between parties only."""
        out = OpStats()
        out.add(self.total)
        d = self.dealer
        out.rounds -= d.rounds
        out.messages_sent -= d.messages_sent
        out.messages_received -= d.messages_received
        out.bytes_sent -= d.bytes_sent
        out.bytes_received -= d.bytes_received
        out.wait_s -= d.wait_s
        return out

    def _tag(self, tag: str) -> OpStats:
        # Hot path (several calls per message): a dict hit for tags seen before.
        stats = self.by_tag.get(tag)
        if stats is None:
            key = tag.split("#", 1)[0]
            stats = self.by_tag.get(key)
            if stats is None:
                stats = self.by_tag[key] = OpStats()
        return stats

    def reset(self) -> None:
        """Zero every counter."""
        self.total = OpStats()
        self.by_tag = {}
        self.header_bytes = 0
        self.dealer = OpStats()

    def _on_send(self, tag: str, nbytes: int, header_bytes: int, dealer: bool = False) -> None:
        for stats in (self.total, self._tag(tag), *((self.dealer,) if dealer else ())):
            stats.messages_sent += 1
            stats.bytes_sent += nbytes
        self.header_bytes += header_bytes

    def _on_recv(self, tag: str, nbytes: int, waited: float, dealer: bool = False) -> None:
        for stats in (self.total, self._tag(tag), *((self.dealer,) if dealer else ())):
            stats.messages_received += 1
            stats.bytes_received += nbytes
            stats.wait_s += waited

    def _on_round(self, tag: str, dealer: bool = False) -> None:
        self.total.rounds += 1
        self._tag(tag).rounds += 1
        if dealer:
            self.dealer.rounds += 1

    def snapshot(self) -> CommStats:
        """An independent copy of the current counters."""
        copy = CommStats(header_bytes=self.header_bytes)
        copy.total.add(self.total)
        copy.dealer.add(self.dealer)
        for tag, stats in self.by_tag.items():
            copy._tag(tag).add(stats)
        return copy

    def table(self) -> str:
        """A plain-text table of the counters per op tag, largest byte count first."""
        rows = sorted(self.by_tag.items(), key=lambda kv: -kv[1].bytes_sent)
        lines = [
            f"{'op':<28}{'rounds':>8}{'msgs out':>10}{'bytes out':>14}{'bytes in':>14}{'wait s':>10}"
        ]
        for tag, s in [*rows, ("TOTAL", self.total)]:
            lines.append(
                f"{tag:<28}{s.rounds:>8}{s.messages_sent:>10}{s.bytes_sent:>14}"
                f"{s.bytes_received:>14}{s.wait_s:>10.4f}"
            )
        return "\n".join(lines)


class Communicator(ABC):
    """Point-to-point and collective communication between the parties of one session.

    Ranks ``0 .. world_size - 1`` are parties; rank ``world_size`` is the dealer when
    ``has_dealer``. Collectives (``exchange``, ``broadcast``, ``gather``, ``all_gather``,
    ``all_reduce``, ``barrier``) involve the parties only, and every party must call them in
    the same order with the same tag (SPMD).
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        *,
        timeout_s: float,
        max_message_bytes: int = 1 << 32,
        has_dealer: bool = False,
    ) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        last = world_size if has_dealer else world_size - 1
        if not 0 <= rank <= last:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        self.rank = rank
        self.world_size = world_size
        self.has_dealer = has_dealer
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.stats = CommStats()
        self._sent_seq: dict[int, int] = {}
        self._recv_seq: dict[int, int] = {}

    # ----------------------------------------------------------------- transport primitives
    @abstractmethod
    def _post(self, dst: int, header: bytes, payload: memoryview) -> None:
        """Queue one message for ``dst``; must not wait for the peer to receive it."""

    @abstractmethod
    def _fetch(self, src: int, timeout_s: float) -> tuple[Header, torch.Tensor] | None:
        """The next message from ``src``, decoded, or ``None`` after ``timeout_s`` seconds.

        Implementations decode with :func:`~crypten_lite.runtime.wire.decode_header` (passing
        ``self.max_message_bytes``) and raise :class:`PartyFailedError` when they know the peer
        is gone.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release transport resources."""

    def _round_done(self) -> None:  # noqa: B027 - optional hook
        """Called when a public operation (``send``, ``recv``, a collective) has completed.

        A transport that sends without copying overrides it to wait until its buffers are
        released, so a caller may modify a tensor in place as soon as the operation returns.
        """

    # ----------------------------------------------------------------- naming
    @property
    def dealer_rank(self) -> int:
        """The dealer's rank (``world_size``); valid only when ``has_dealer``."""
        return self.world_size

    def _name(self, rank: int) -> str:
        return "the dealer" if rank == self.world_size and self.has_dealer else f"party {rank}"

    @property
    def me(self) -> str:
        """How error messages name this process."""
        return self._name(self.rank)

    def _dealer_link(self, peer: int) -> bool:
        """Whether a message to or from ``peer`` crosses the dealer link (counted apart)."""
        return self.has_dealer and self.world_size in (peer, self.rank)

    def _check_peer(self, peer: int, what: str) -> None:
        last = self.world_size if self.has_dealer else self.world_size - 1
        if not 0 <= peer <= last or peer == self.rank:
            raise ValueError(f"{self.me}: cannot {what} rank {peer} (world_size {self.world_size})")

    # ----------------------------------------------------------------- messages
    def _send_one(self, dst: int, tensor: torch.Tensor, tag: str) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{self.me}: can only send torch tensors, got {type(tensor).__name__}")
        # Build the payload and header before taking a sequence number: if either raises, the
        # message was never sent and this party's numbering still matches its peers'.
        payload = tensor_payload(tensor)
        seq = self._sent_seq.get(dst, 0)
        header = encode_header(self.rank, seq, tag, tensor.dtype, tuple(tensor.shape))
        self._sent_seq[dst] = seq + 1
        self._post(dst, header, payload)
        self.stats._on_send(tag, payload.nbytes, len(header), self._dealer_link(dst))

    def _recv_one(self, src: int, tag: str) -> torch.Tensor:
        expected = self._recv_seq.get(src, 0)
        start = time.perf_counter()
        got = self._fetch(src, self.timeout_s)
        waited = time.perf_counter() - start
        if got is None:
            raise PartyTimeoutError(
                f"{self.me}: no '{tag}' #{expected} from {self._name(src)} within "
                f"{self.timeout_s:g} s"
            )
        header, tensor = got
        if header.sender == src and header.tag == FAILURE_NOTICE and tag != FAILURE_NOTICE:
            # protocols.sharing.abort_share: src's input failed where no message was due
            raise PartyFailedError(
                f"{self.me}: {self._name(src)} could not share its input (cryptensor/share "
                f"raised there; its own error says why), so '{tag}' #{expected} never comes"
            )
        if header.sender != src or header.seq != expected or header.tag != tag:
            raise ProtocolError(
                f"{self.me}: parties desynchronised: expected '{tag}' #{expected} from "
                f"{self._name(src)}, got '{header.tag}' #{header.seq} from "
                f"{self._name(header.sender)}"
            )
        self._recv_seq[src] = expected + 1
        self.stats._on_recv(tag, header.nbytes, waited, self._dealer_link(src))
        return tensor

    # ----------------------------------------------------------------- point to point
    def send(self, dst: int, tensor: torch.Tensor, tag: str) -> None:
        """Send one tensor to ``dst`` (a party or the dealer). One round."""
        self._check_peer(dst, "send to")
        self._send_one(dst, tensor, tag)
        self.stats._on_round(tag, self._dealer_link(dst))
        self._round_done()

    def recv(self, src: int, tag: str) -> torch.Tensor:
        """Receive the next tensor from ``src``; it must carry ``tag``. One round.

        Raises:
            PartyTimeoutError: nothing arrived within the timeout.
            ProtocolError: the message carries another tag or sequence number.
        """
        self._check_peer(src, "receive from")
        tensor = self._recv_one(src, tag)
        self.stats._on_round(tag, self._dealer_link(src))
        self._round_done()
        return tensor

    # ----------------------------------------------------------------- collectives
    @property
    def peers(self) -> list[int]:
        """The other parties (not the dealer)."""
        return [r for r in range(self.world_size) if r != self.rank]

    def _require_party(self, what: str) -> None:
        if self.rank >= self.world_size:
            raise ValueError(f"{self.me} does not take part in {what}")

    def exchange(
        self, tensors: torch.Tensor | Mapping[int, torch.Tensor], tag: str
    ) -> dict[int, torch.Tensor]:
        """All-to-all of one round: send to every other party, then receive from each.

        Args:
            tensors: one tensor sent to every peer, or a mapping ``peer -> tensor``; with a
                mapping, only the peers named in it are sent to and received from.

        Returns:
            ``peer -> tensor`` received from each peer sent to.
        """
        self._require_party("exchange")
        targets = self.peers if isinstance(tensors, torch.Tensor) else list(tensors)
        for peer in targets:
            self._check_peer(peer, "exchange with")
            self._send_one(
                peer, tensors if isinstance(tensors, torch.Tensor) else tensors[peer], tag
            )
        received = {peer: self._recv_one(peer, tag) for peer in targets}
        self.stats._on_round(tag)
        self._round_done()
        return received

    def route(
        self, sends: Mapping[int, torch.Tensor], recv_from: Sequence[int], tag: str
    ) -> dict[int, torch.Tensor]:
        """One round of any pattern: send ``sends[peer]`` to each peer, then receive one tensor
        from each of ``recv_from`` (the replicated family's rotations: to ``i - 1``, from
        ``i + 1``). Every send leaves before any receive.

        Returns:
            ``peer -> tensor`` received from each of ``recv_from``.
        """
        self._require_party("route")
        for peer in list(sends) + list(recv_from):
            self._check_peer(peer, "route with")
        for peer, tensor in sends.items():
            self._send_one(peer, tensor, tag)
        received = {peer: self._recv_one(peer, tag) for peer in recv_from}
        self.stats._on_round(tag)
        self._round_done()
        return received

    def broadcast(self, tensor: torch.Tensor | None, src: int, tag: str) -> torch.Tensor:
        """Party ``src`` sends ``tensor`` to every other party; all return it. One round."""
        self._require_party("broadcast")
        self._check_src(src)
        if self.rank == src:
            if tensor is None:
                raise ValueError(f"{self.me}: broadcast source must pass a tensor")
            for peer in self.peers:
                self._send_one(peer, tensor, tag)
            result = tensor
        else:
            result = self._recv_one(src, tag)
        self.stats._on_round(tag)
        self._round_done()
        return result

    def gather(self, tensor: torch.Tensor, dst: int, tag: str) -> list[torch.Tensor] | None:
        """Every party sends ``tensor`` to ``dst``, which returns them ordered by rank."""
        self._require_party("gather")
        self._check_src(dst)
        result: list[torch.Tensor] | None = None
        if self.rank == dst:
            result = [
                tensor if r == dst else self._recv_one(r, tag) for r in range(self.world_size)
            ]
        else:
            self._send_one(dst, tensor, tag)
        self.stats._on_round(tag, self._dealer_link(dst))
        self._round_done()
        return result

    def all_gather(self, tensor: torch.Tensor, tag: str) -> list[torch.Tensor]:
        """Every party's ``tensor``, ordered by rank, on every party. One round."""
        received = self.exchange(tensor, tag)
        return [tensor if r == self.rank else received[r] for r in range(self.world_size)]

    def all_reduce(self, tensor: torch.Tensor, tag: str) -> torch.Tensor:
        """Sum of every party's ``tensor`` (int64 sums wrap mod 2**64). One round."""
        total = tensor.clone()
        for peer_tensor in self.exchange(tensor, tag).values():
            total += peer_tensor
        return total

    def barrier(self, tag: str = "barrier") -> None:
        """Return once every party has reached the same barrier."""
        self.exchange(torch.zeros((), dtype=torch.uint8), tag)

    def _check_src(self, src: int) -> None:
        if not 0 <= src < self.world_size:
            raise ValueError(f"{self.me}: rank {src} is not a party (world_size {self.world_size})")


class InProcessHub:
    """Queues joining N parties (and optionally a dealer) that run as threads of one process.

    For fast unit tests: messages are encoded exactly as on the wire (header bytes plus a copy
    of the payload), so the same validation runs. ``abort`` wakes every waiting party with
    :class:`PartyFailedError` when one thread fails.
    """

    def __init__(self, world_size: int, *, has_dealer: bool = False) -> None:
        self.world_size = world_size
        self.has_dealer = has_dealer
        n = world_size + (1 if has_dealer else 0)
        self._queues: dict[tuple[int, int], queue.Queue[tuple[bytes, bytes | bytearray]]] = {
            (s, d): queue.Queue() for s in range(n) for d in range(n) if s != d
        }
        self._aborted = threading.Event()
        self.abort_reason = ""

    def abort(self, reason: str) -> None:
        """Make every pending and future fetch fail with ``reason``."""
        self.abort_reason = reason
        self._aborted.set()

    def communicator(
        self, rank: int, *, timeout_s: float = 30.0, max_message_bytes: int = 1 << 32
    ) -> InProcessCommunicator:
        return InProcessCommunicator(
            self, rank, timeout_s=timeout_s, max_message_bytes=max_message_bytes
        )


class InProcessCommunicator(Communicator):
    """A party's end of an :class:`InProcessHub`."""

    _POLL_S = 0.05

    def __init__(
        self, hub: InProcessHub, rank: int, *, timeout_s: float, max_message_bytes: int
    ) -> None:
        super().__init__(
            rank,
            hub.world_size,
            timeout_s=timeout_s,
            max_message_bytes=max_message_bytes,
            has_dealer=hub.has_dealer,
        )
        self._hub = hub

    def _post(self, dst: int, header: bytes, payload: memoryview) -> None:
        # One copy, writable, so the receiver wraps it in place (tensor_from_payload copies a
        # read-only ``bytes`` again: two copies of every payload, 160 MB for a 1e7-element one).
        self._hub._queues[(self.rank, dst)].put((header, bytearray(payload)))

    def _fetch(self, src: int, timeout_s: float) -> tuple[Header, torch.Tensor] | None:
        q = self._hub._queues[(src, self.rank)]
        deadline = time.monotonic() + timeout_s
        while True:
            if self._hub._aborted.is_set():
                raise PartyFailedError(f"{self.me}: stopping because {self._hub.abort_reason}")
            try:
                raw_header, payload = q.get(
                    timeout=min(self._POLL_S, max(0.0, deadline - time.monotonic()))
                )
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return None
                continue
            header = decode_header(raw_header, self.max_message_bytes)
            return header, tensor_from_payload(header, payload)

    def inject_raw(self, dst: int, header: bytes, payload: bytes) -> None:
        """Test hook: put arbitrary bytes on the queue to ``dst`` as if this party sent them."""
        self._hub._queues[(self.rank, dst)].put((header, payload))
