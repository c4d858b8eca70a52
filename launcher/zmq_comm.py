"""Layer L6: the ZeroMQ implementation of :class:`~crypten_lite.runtime.comm.Communicator`.

Socket layout (one process = one rank; the dealer is rank ``world_size``)::

    rank r                                            rank p
    +-------------------------+                       +-------------------------+
    | PUSH -> p  (send ctx)   | --------------------> | PULL  (recv ctx, bound) |
    | PULL  (recv ctx, bound) | <-------------------- | PUSH -> r  (send ctx)   |
    +-------------------------+                       +-------------------------+

* Every rank binds exactly one PULL socket (``ipc://<run dir>/rank-<r>`` or ``tcp://<host>:<random
  port>``) and connects one PUSH socket to every other rank's PULL socket. Messages from all
  peers interleave on the one PULL socket; ZeroMQ keeps each connection in order, and
  :meth:`ZmqCommunicator._fetch` files messages that arrive for another peer into a per-peer
  inbox, so ``_fetch(src)`` sees ``src``'s messages in send order.
* A message is one ZeroMQ multipart message of exactly two frames: the header of
  :mod:`crypten_lite.runtime.wire` and the raw tensor bytes. Anything else — one frame, three frames,
  a header that does not decode, a payload whose length differs from the header's — is a
  :class:`~crypten_lite.errors.ProtocolError` on the receiver; the remaining frames of the bad
  message are drained first, so the socket stays at a message boundary.
* Receiving: the header is decoded (size checked against ``max_message_bytes``) *before* any
  payload buffer is allocated or wrapped. A small payload (< ``zmq.COPY_THRESHOLD``) is then
  received straight into a fresh tensor with ``Socket.recv_into``; a large one is taken as the
  ZeroMQ frame (``copy=False``) and the tensor wraps the frame's writable buffer — libzmq has
  already received it into memory of its own, so this saves a copy of the whole payload (it
  halves the receive cost of an 8 MB message). ``ZMQ_MAXMSGSIZE`` is the guard inside libzmq:
  a frame larger than ``max_message_bytes`` drops the connection before it is buffered.
* Sending: payloads of at least ``zmq.COPY_THRESHOLD`` bytes go out zero-copy (``copy=False``);
  ZeroMQ keeps a reference to the tensor's buffer until it is on the wire. Because the caller may
  modify a tensor in place as soon as a collective returns, every public operation that sends
  (``send``, ``exchange``, ``broadcast``, ``gather``; the other collectives are built on them)
  waits with a :class:`zmq.MessageTracker` until libzmq has released its large payloads before
  returning — this waits for the local I/O thread, never for the peer's application. Smaller
  payloads are copied into the message at once. The wait is the base class's
  ``_round_done`` hook, which every public operation calls when it completes.
* Memory a peer can make this rank hold, per peer: at most ``RCVHWM`` (:data:`_RCVHWM`)
  messages inside libzmq — when that pipe is full libzmq stops reading the connection and TCP
  pushes back on the sender — and at most ``max_queued_bytes`` of payload read ahead into the
  peer's inbox while this rank waits for someone else. A peer that goes past the inbox bound
  (it runs ahead of the protocol, or holds the secret and floods) is a
  :class:`~crypten_lite.errors.ProtocolError` naming it and the bound; the launcher then stops
  the session. The sending side's high-water mark is 0 (unlimited): ``send`` never blocks, so
  backpressure can never deadlock two parties that both send before they receive.
* ``linger`` is 0 on every socket, so no error path can hang on exit. Only a graceful
  :meth:`ZmqCommunicator.close` gives the PUSH sockets a bounded linger (``close_linger_s``)
  so the last messages of a program are delivered, and closes them in their own context first;
  the PULL socket closes afterwards. A peer that sees this rank's PULL socket disconnect can
  therefore conclude that everything this rank sent has arrived, which is how a peer that
  exits or crashes is detected (:class:`~crypten_lite.errors.PartyFailedError`) without waiting
  for the full timeout.
* Security: over TCP every socket uses CurveZMQ with keys bound to the session secret
  (:mod:`crypten_lite.launcher.security`); the ZAP handler tags each connection with the
  sender's rank, which must match the header's sender field.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

import numpy
import torch
import zmq
from zmq.utils.monitor import parse_monitor_message

from crypten_lite.errors import PartyFailedError, PartyTimeoutError, ProtocolError
from crypten_lite.launcher.security import Security, rank_name
from crypten_lite.runtime.comm import Communicator
from crypten_lite.runtime.wire import NUMPY_DTYPES, Header, decode_header, tensor_from_payload

__all__ = ["ZmqCommunicator"]

# After a peer's socket disconnects, messages it flushed before closing may still be in the
# kernel; keep receiving this long before declaring it gone.
_GONE_GRACE_S = 1.0
# A blocked receive wakes up this often to look for disconnected peers and the deadline.
_SLICE_MS = 250
_MONITOR_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
# Messages libzmq buffers per incoming connection before it stops reading it (backpressure).
# A protocol round is one message per peer, so this is far more than any honest peer needs.
_RCVHWM = 256


def _new_context() -> zmq.Context[zmq.Socket[bytes]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    # Every socket of this context starts with linger 0 (see the module docstring).
    ctx.setsockopt(zmq.LINGER, 0)
    return ctx


class ZmqCommunicator(Communicator):
    """A rank's end of the ZeroMQ mesh described in the module docstring.

    Create it in two steps: the constructor binds the receiving socket (its address is
    :attr:`endpoint`), then :meth:`connect_peers` connects to the address table handed out by
    the rendezvous (:mod:`crypten_lite.launcher.rendezvous`).

    Args:
        rank: this process's rank (``world_size`` for the dealer).
        world_size: number of parties.
        bind: where to bind the receiving socket, e.g. ``"ipc:///run/dir/rank-0"`` or
            ``"tcp://10.0.0.5:*"`` (``*`` picks a free port).
        security: CURVE settings; with a secret, every socket uses CurveZMQ.
        timeout_s: seconds to wait for one expected message.
        max_message_bytes: largest payload accepted.
        max_queued_bytes: most payload bytes one peer may have waiting in this rank's inbox
            (default: ``max_message_bytes``, i.e. one largest message ahead); see the module
            docstring.
        has_dealer: whether rank ``world_size`` is a dealer process.
        close_linger_s: at most this long, :meth:`close` waits for queued messages to leave.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        *,
        bind: str,
        security: Security,
        timeout_s: float,
        max_message_bytes: int = 1 << 32,
        max_queued_bytes: int | None = None,
        has_dealer: bool = False,
        close_linger_s: float = 10.0,
    ) -> None:
        super().__init__(
            rank,
            world_size,
            timeout_s=timeout_s,
            max_message_bytes=max_message_bytes,
            has_dealer=has_dealer,
        )
        self._security = security
        self._close_linger_s = close_linger_s
        self._closed = False
        last = world_size if has_dealer else world_size - 1
        self._others = [r for r in range(last + 1) if r != rank]
        # Two contexts: closing the send side can then wait for its queued messages
        # (Context.term) before the receive side closes (see the module docstring).
        self._recv_ctx = _new_context()
        self._send_ctx = _new_context()
        self._max_queued = max_message_bytes if max_queued_bytes is None else max_queued_bytes
        self._pull = self._recv_ctx.socket(zmq.PULL)
        self._pull.rcvhwm = _RCVHWM
        self._pull.rcvtimeo = _SLICE_MS
        # The header is tiny, so the largest legal frame is the payload limit.
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        security.make_server(self._pull, rank_name(rank))
        try:
            self._pull.bind(bind)
        except zmq.ZMQError as exc:
            self._abort()
            raise OSError(f"{self.me}: cannot bind its socket to {bind}: {exc}") from None
        self.endpoint: str = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peer_endpoints: dict[int, str] = {}
        self._push: dict[int, zmq.Socket[bytes]] = {}
        self._monitors: dict[zmq.Socket[bytes], int] = {}
        self._inbox: dict[int, deque[tuple[Header, torch.Tensor]]] = {
            r: deque() for r in self._others
        }
        self._queued: dict[int, int] = dict.fromkeys(self._others, 0)  # payload bytes in inbox
        self._gone: dict[int, float] = {}
        self._unsent: list[tuple[int, bytes, zmq.MessageTracker]] = []
        self._expecting: tuple[int, str, int] | None = None

    # ----------------------------------------------------------------- set-up
    def connect_peers(self, endpoints: Mapping[int, str]) -> None:
        """Connect a PUSH socket to every other rank's receiving socket.

        Args:
            endpoints: rank -> endpoint, for every rank of the session (this one included).

        Raises:
            ProtocolError: the table misses a rank.
        """
        missing = [r for r in self._others if r not in endpoints]
        if missing:
            raise ProtocolError(f"{self.me}: the address table has no entry for ranks {missing}")
        for peer in self._others:
            sock = self._send_ctx.socket(zmq.PUSH)
            sock.sndhwm = 0
            self._security.make_client(sock, rank_name(self.rank), rank_name(peer))
            monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sock.connect(endpoints[peer])
            self._push[peer] = sock
            self._monitors[monitor] = peer
            self.peer_endpoints[peer] = endpoints[peer]

    # ----------------------------------------------------------------- transport primitives
    def _post(self, dst: int, header: bytes, payload: memoryview) -> None:
        sock = self._push.get(dst)
        if sock is None:
            raise ProtocolError(f"{self.me}: not connected to {self._name(dst)}")
        sock.send(header, zmq.SNDMORE)
        if payload.nbytes < zmq.COPY_THRESHOLD:
            sock.send(payload)
        else:
            # The Frame keeps ``payload`` (and so the tensor) alive until libzmq releases it.
            tracker = sock.send(payload, copy=False, track=True)
            self._unsent.append((dst, header, tracker))

    def _fetch(self, src: int, timeout_s: float) -> tuple[Header, torch.Tensor] | None:
        inbox = self._inbox.get(src)
        if inbox is None:
            raise ProtocolError(f"{self.me}: no connection with rank {src}")
        if inbox:
            header, tensor = inbox.popleft()
            self._queued[src] -= header.nbytes
            return header, tensor
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # A plain blocking receive (RCVTIMEO = one slice), the fastest way to wait.
                header, tensor = self._receive(src)
            except zmq.Again:
                # Between slices: notice peers that disconnected, and the deadline.
                self._check_peers(src)
                if time.monotonic() >= deadline:
                    return None
                continue
            if header.sender == src:
                return header, tensor
            self._hold(src, header, tensor)

    def _hold(self, src: int, header: Header, tensor: torch.Tensor) -> None:
        """File a message from another peer while waiting for ``src``, within the byte bound.

        Raises:
            ProtocolError: the sender would have more than ``max_queued_bytes`` waiting.
        """
        peer = header.sender
        queued = self._queued[peer] + header.nbytes
        if queued > self._max_queued:
            raise ProtocolError(
                f"{self.me}: {self._name(peer)} sent {queued} bytes ahead of the protocol "
                f"(up to '{header.tag}' #{header.seq}) while {self.me} waited for "
                f"{self._expected_text(src)}: more than the bound of {self._max_queued} bytes "
                "queued per peer; stopping the session"
            )
        self._queued[peer] = queued
        self._inbox[peer].append((header, tensor))

    # ----------------------------------------------------------------- receiving
    def _receive(self, src: int) -> tuple[Header, torch.Tensor]:
        """Read one whole message from the PULL socket (validation in the module docstring).

        Raises:
            zmq.Again: nothing arrived within one slice.
        """
        pull = self._pull
        user_id: str | None = None
        if self._security.curve:
            frame = pull.recv(copy=False)
            raw = frame.bytes
            user_id = str(frame.get("User-Id"))
        else:
            raw = pull.recv()
        if not pull.getsockopt(zmq.RCVMORE):
            raise self._bad_frame(src, "a message of one frame (a header without payload)")
        try:
            header = decode_header(raw, self.max_message_bytes)
        except ProtocolError as exc:
            self._drain()
            raise self._bad_frame(src, str(exc)) from None
        if header.sender not in self._inbox:
            self._drain()
            raise self._bad_frame(src, f"a frame claiming to come from rank {header.sender}")
        if user_id is not None and user_id != rank_name(header.sender):
            self._drain()
            raise self._bad_frame(
                src,
                f"a frame claiming to come from {self._name(header.sender)} on the connection "
                f"authenticated as {user_id or 'nobody'}",
            )
        # The payload frame is already here: ZeroMQ delivers all frames of a message at once.
        nbytes = header.nbytes
        if nbytes < zmq.COPY_THRESHOLD:
            # Allocate with numpy and hand the memory to torch once: each torch call costs
            # microseconds, which a small message's round trip pays twice.
            np_dtype = NUMPY_DTYPES.get(header.dtype)
            if np_dtype is None:  # bfloat16 has no numpy dtype: receive raw bytes
                arr = numpy.empty(nbytes, dtype=numpy.uint8)
            else:
                arr = numpy.empty(header.shape, dtype=np_dtype)
            got = pull.recv_into(arr.data) if nbytes else len(pull.recv(copy=False))
        else:
            # libzmq has already received this frame into a buffer of its own (at most
            # MAXMSGSIZE bytes); wrapping that buffer saves a copy of the whole payload.
            frame = pull.recv(copy=False)
            got = len(frame)
        if got != nbytes:
            self._drain()
            raise self._bad_frame(
                src,
                f"a {got}-byte payload for '{header.tag}' #{header.seq} from "
                f"{self._name(header.sender)}, whose header announces {nbytes} bytes",
            )
        if pull.getsockopt(zmq.RCVMORE):
            self._drain()
            raise self._bad_frame(
                src, f"extra frames after '{header.tag}' #{header.seq} from {header.sender}"
            )
        if nbytes >= zmq.COPY_THRESHOLD:
            tensor = tensor_from_payload(header, frame.buffer)  # writable: wrapped, not copied
            if tensor.data_ptr() % tensor.element_size():
                tensor = tensor.clone()  # libzmq buffers are 8-byte aligned; be safe anyway
            return header, tensor
        if nbytes == 0:
            # numpy gives empty arrays zero strides, which torch cannot view or send on.
            return header, torch.empty(header.shape, dtype=header.dtype)
        if np_dtype is not None:
            return header, torch.from_numpy(arr)
        return header, torch.from_numpy(arr).view(header.dtype).reshape(header.shape)

    def _drain(self) -> None:
        """Discard the rest of a multipart message."""
        while self._pull.getsockopt(zmq.RCVMORE):
            self._pull.recv(copy=False)

    def _bad_frame(self, src: int, what: str) -> ProtocolError:
        return ProtocolError(
            f"{self.me}: malformed message on its socket while waiting for "
            f"{self._expected_text(src)}: {what}"
        )

    def _expected_text(self, src: int) -> str:
        if self._expecting is not None and self._expecting[0] == src:
            _, tag, seq = self._expecting
            return f"'{tag}' #{seq} from {self._name(src)}"
        return f"a message from {self._name(src)}"

    def _check_peers(self, src: int) -> None:
        """Read connection events; fail if ``src`` left and its last messages are in.

        Raises:
            PartyFailedError: ``src`` disconnected more than ``_GONE_GRACE_S`` ago.
        """
        for monitor, peer in self._monitors.items():
            while monitor.poll(0):
                event = parse_monitor_message(monitor.recv_multipart())["event"]
                if event == zmq.EVENT_DISCONNECTED:
                    self._gone.setdefault(peer, time.monotonic())
                else:
                    self._gone.pop(peer, None)
        gone_at = self._gone.get(src)
        if gone_at is not None and time.monotonic() >= gone_at + _GONE_GRACE_S:
            raise PartyFailedError(
                f"{self.me}: {self._name(src)} closed its connection (it exited or crashed) "
                f"while {self.me} waited for {self._expected_text(src)}"
            )

    def _recv_one(self, src: int, tag: str) -> torch.Tensor:
        # Remember what we wait for, so transport errors can name the op.
        self._expecting = (src, tag, self._recv_seq.get(src, 0))
        try:
            return super()._recv_one(src, tag)
        finally:
            self._expecting = None

    # ----------------------------------------------------------------- send completion
    def _wait_sent(self) -> None:
        """Block until libzmq has released every zero-copy payload (module docstring).

        Called when an operation succeeds. When it raises instead, the payloads stay queued
        (and referenced) until the next successful operation, :meth:`close` or :meth:`abort`;
        waiting for a peer that may be gone would only delay the error.
        """
        unsent, self._unsent = self._unsent, []
        for i, (dst, header, tracker) in enumerate(unsent):
            try:
                tracker.wait(self.timeout_s)
            except zmq.NotDone:
                self._unsent = unsent[i + 1 :]
                tag = decode_header(header, 1 << 62).tag
                raise PartyTimeoutError(
                    f"{self.me}: '{tag}' to {self._name(dst)} was not sent within "
                    f"{self.timeout_s:g} s"
                ) from None

    def _round_done(self) -> None:
        if self._unsent:
            self._wait_sent()

    # ----------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Deliver queued messages (at most ``close_linger_s``), then close every socket."""
        if self._closed:
            return
        self._closed = True
        linger_ms = int(self._close_linger_s * 1000)
        for sock in self._push.values():
            sock.disable_monitor()
        for monitor in self._monitors:
            monitor.close(linger=0)
        for sock in self._push.values():
            sock.close(linger=linger_ms)
        # Blocks until the PUSH sockets have flushed (or their linger ran out).
        self._send_ctx.term()
        self._pull.close(linger=0)
        self._security.stop_authenticator()
        self._recv_ctx.term()

    def _abort(self) -> None:
        """Close everything at once, dropping queued messages (error paths)."""
        self._closed = True
        self._security.stop_authenticator()
        self._send_ctx.destroy(linger=0)
        self._recv_ctx.destroy(linger=0)

    def abort(self) -> None:
        """Close every socket immediately, dropping anything not yet sent."""
        if not self._closed:
            self._abort()
