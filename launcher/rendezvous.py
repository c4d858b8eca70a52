"""Layer L6: the rendezvous — how the ranks of a session learn each other's addresses.

The coordinator is a thread of a launcher process (the local launcher, or rank 0's launcher
across hosts). Every rank binds its own receiving socket first (random port or IPC path), then
says hello to the coordinator and waits for the address table::

    rank r (DEALER, CURVE client) ---- hello ---->  coordinator (ROUTER, CURVE server)
                                  <--- table ----   (once every rank has said hello)
                                  <--- error ----   (mismatch, duplicate, timeout)

Each message is one frame of UTF-8 JSON (at most 64 KiB; never pickle)::

    hello: {"kind": "hello", "version": 1, "rank": r, "world_size": N, "has_dealer": bool,
            "transport": "ipc" | "tcp", "endpoint": "tcp://10.0.0.5:41234", "host": str,
            "pid": int}
    table: {"kind": "table", "endpoints": {"0": "...", "1": "...", ...}}
    error: {"kind": "error", "reason": "timeout" | "mismatch", "message": str}

The coordinator checks that every hello agrees with its own world size, dealer flag, transport
and version, that no rank arrives twice, and answers everyone with the same error if not. Every
rank must arrive within ``timeout_s`` of the *first* hello — counting from the coordinator's start
would charge the parties' start-up (importing torch takes seconds on a busy host) to the
timeout — otherwise the rendezvous fails with a message naming the missing ranks. Over TCP the
sockets use CurveZMQ keys bound to the session secret: a process with another secret fails the
handshake, which the client notices through a socket monitor and reports as
:class:`~crypten_lite.errors.AuthenticationError`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from crypten_lite.errors import AuthenticationError, LaunchError, PartyTimeoutError
from crypten_lite.launcher.security import COORDINATOR, Security, rank_name

__all__ = ["RENDEZVOUS_VERSION", "Coordinator", "rendezvous", "role_name"]

RENDEZVOUS_VERSION = 1
_MAX_JSON_BYTES = 1 << 16
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def role_name(rank: int, world_size: int) -> str:
    """``"party r"``, or ``"the dealer"`` for rank ``world_size``."""
    return "the dealer" if rank == world_size else f"party {rank}"


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


class Coordinator:
    """The rendezvous server: collects every rank's address and hands out the table.

    Args:
        bind: endpoint to bind, e.g. ``"tcp://*:29500"`` or ``"ipc:///run/dir/coordinator"``.
        world_size: number of parties.
        has_dealer: whether a dealer (rank ``world_size``) takes part.
        transport: ``"ipc"`` or ``"tcp"``; every rank must use the same.
        security: CURVE settings (the coordinator presents the ``"coordinator"`` key).
        timeout_s: every rank must have arrived this long after the first one.

    Raises:
        OSError: the endpoint cannot be bound (e.g. the port is busy).
    """

    def __init__(
        self,
        *,
        bind: str,
        world_size: int,
        has_dealer: bool,
        transport: str,
        security: Security,
        timeout_s: float,
    ) -> None:
        self.world_size = world_size
        self.has_dealer = has_dealer
        self.transport = transport
        self.timeout_s = timeout_s
        self._security = security
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
        self._ctx.setsockopt(zmq.LINGER, 0)
        security.start_authenticator(self._ctx)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.MAXMSGSIZE, _MAX_JSON_BYTES)
        security.make_server(self._router, COORDINATOR)
        try:
            self._router.bind(bind)
        except zmq.ZMQError as exc:
            self._shutdown()
            raise OSError(f"cannot bind the coordinator to {bind}: {exc.strerror}") from None
        self.endpoint: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._monitor = self._router.get_monitor_socket(_HANDSHAKE_FAILED)
        self._arrived: dict[int, tuple[bytes, dict[str, Any]]] = {}
        self._rejected: list[bytes] = []  # who said a hello that was refused: told the error too
        self._failed_handshakes = 0
        self._deadline: float | None = None  # set by the first hello
        self._stop = threading.Event()
        self.done = threading.Event()
        self.error: str | None = None
        self._reason = ""
        self._thread = threading.Thread(target=self._serve, name="crypten-lite-coordinator")
        self._thread.daemon = True

    @property
    def expected(self) -> list[int]:
        """Every rank that must arrive."""
        return list(range(self.world_size + (1 if self.has_dealer else 0)))

    def start(self) -> None:
        """Start serving in a background thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the sockets."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._shutdown()

    def _shutdown(self) -> None:
        self._security.stop_authenticator()
        self._ctx.destroy(linger=0)

    # ----------------------------------------------------------------- serving
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(100):
                if sock is self._monitor:
                    parse_monitor_message(self._monitor.recv_multipart())
                    self._failed_handshakes += 1
                    continue
                frames = self._router.recv_multipart()
                if len(frames) == 2:
                    self._on_hello(frames[0], _decode(frames[1]))
            deadline = self._deadline
            if not self.done.is_set() and deadline is not None and time.monotonic() > deadline:
                self._fail("timeout", self._missing_message())
        self._monitor.close(linger=0)
        self._router.close(linger=0)

    def _reply(self, ident: bytes, obj: dict[str, Any]) -> None:
        self._router.send_multipart([ident, _encode(obj)])

    def _on_hello(self, ident: bytes, hello: dict[str, Any] | None) -> None:
        if hello is None or hello.get("kind") != "hello":
            return  # not one of ours; an authenticated peer would not send this
        if self._deadline is None:
            self._deadline = time.monotonic() + self.timeout_s
        if self.done.is_set():
            msg = self.error or "the session has already started; this rank arrived twice"
            self._reply(ident, {"kind": "error", "reason": self._reason, "message": msg})
            return
        rank = hello.get("rank")
        who = f"{role_name(rank, self.world_size)}" if isinstance(rank, int) else "a process"
        where = f" (host {hello.get('host')}, pid {hello.get('pid')})"
        mine = {
            "version": RENDEZVOUS_VERSION,
            "world_size": self.world_size,
            "has_dealer": self.has_dealer,
            "transport": self.transport,
        }
        for key, value in mine.items():
            if hello.get(key) != value:
                self._reject(
                    ident,
                    f"rendezvous failed: {who}{where} was started with {key} "
                    f"{hello.get(key)!r}, the coordinator with {value!r}",
                )
                return
        if rank not in self.expected:
            self._reject(ident, f"rendezvous failed: rank {rank!r}{where} is out of range")
            return
        if rank in self._arrived:
            first = self._arrived[rank][1]
            self._reject(
                ident,
                f"rendezvous failed: {who} arrived twice (host {first.get('host')}, pid "
                f"{first.get('pid')}, and{where[1:-1]})",
            )
            return
        if not isinstance(hello.get("endpoint"), str):
            return
        self._arrived[rank] = (ident, hello)
        if all(r in self._arrived for r in self.expected):
            table = {str(r): self._arrived[r][1]["endpoint"] for r in self.expected}
            for r in self.expected:
                self._reply(self._arrived[r][0], {"kind": "table", "endpoints": table})
            self.done.set()

    def _missing_message(self) -> str:
        missing = [role_name(r, self.world_size) for r in self.expected if r not in self._arrived]
        arrived = [role_name(r, self.world_size) for r in self.expected if r in self._arrived] or [
            "nobody"
        ]
        msg = (
            f"rendezvous failed: {', '.join(missing)} did not arrive within "
            f"{self.timeout_s:g} s of the first (arrived: {', '.join(arrived)})"
        )
        if self._failed_handshakes:
            msg += (
                f"; {self._failed_handshakes} connection attempt(s) failed the CURVE handshake "
                "(a process with a different session secret?)"
            )
        if self._security.denied:
            msg += f"; {self._security.denied} connection(s) used a key not derived from the secret"
        return msg

    def _reject(self, ident: bytes, message: str) -> None:
        """Refuse a hello that does not fit the session: the whole rendezvous fails."""
        self._rejected.append(ident)
        self._fail("mismatch", message)

    def _fail(self, reason: str, message: str) -> None:
        """Answer everyone who said hello (accepted or refused) with the same error."""
        self.error = message
        self._reason = reason
        for ident in [*(ident for ident, _ in self._arrived.values()), *self._rejected]:
            self._reply(ident, {"kind": "error", "reason": reason, "message": message})
        self.done.set()


def advertise_host(coordinator: str) -> str:
    """The local IP address a peer can reach this host on: the one routing to the coordinator."""
    if not coordinator.startswith("tcp://"):
        return "127.0.0.1"
    host, _, port = coordinator[len("tcp://") :].rpartition(":")
    host = host.strip("[]")
    if host in ("*", "0.0.0.0", "localhost") or host.startswith("127."):
        return "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, int(port)))  # UDP: no packet is sent
            return str(probe.getsockname()[0])
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def rendezvous(
    *,
    coordinator: str,
    rank: int,
    world_size: int,
    has_dealer: bool,
    transport: str,
    endpoint: str,
    security: Security,
    timeout_s: float,
) -> dict[int, str]:
    """Say hello to the coordinator and wait for the address table.

    Args:
        coordinator: the coordinator's endpoint, e.g. ``"tcp://10.0.0.1:29500"``.
        rank: this process's rank (``world_size`` for the dealer).
        endpoint: where this rank's receiving socket is bound.
        timeout_s: the session's rendezvous timeout; the coordinator answers within it, so
            this side waits a few seconds longer before giving up on it.

    Returns:
        rank -> endpoint for every rank of the session.

    Raises:
        AuthenticationError: the coordinator refused the CURVE handshake (another secret).
        PartyTimeoutError: some rank did not arrive in time, or the coordinator never answered.
        LaunchError: the coordinator refused this rank (mismatched settings, duplicate rank).
    """
    me = role_name(rank, world_size)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(io_threads=1)
    ctx.setsockopt(zmq.LINGER, 0)
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.MAXMSGSIZE, _MAX_JSON_BYTES)
        security.make_client(sock, rank_name(rank), COORDINATOR)
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        sock.connect(coordinator)
        hello = {
            "kind": "hello",
            "version": RENDEZVOUS_VERSION,
            "rank": rank,
            "world_size": world_size,
            "has_dealer": has_dealer,
            "transport": transport,
            "endpoint": endpoint,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        sock.send(_encode(hello))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        # The coordinator's own deadline started earlier; give its answer time to arrive.
        deadline = time.monotonic() + timeout_s + 5.0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PartyTimeoutError(
                    f"{me}: no answer from the coordinator at {coordinator} within "
                    f"{timeout_s + 5.0:g} s (is it running, e.g. rank 0's launcher?)"
                )
            ready = dict(poller.poll(int(remaining * 1000) + 1))
            if monitor in ready:
                raise AuthenticationError(
                    f"{me}: the coordinator at {coordinator} refused the CURVE handshake: this "
                    "process's session secret differs from the coordinator's (check "
                    "--secret-file / CRYPTEN_LITE_SECRET on every host)"
                )
            if sock in ready:
                reply = _decode(sock.recv())
                if reply is None:
                    continue
                if reply.get("kind") == "table" and isinstance(reply.get("endpoints"), dict):
                    table = {int(r): str(ep) for r, ep in reply["endpoints"].items()}
                    if rank not in table:
                        raise LaunchError(f"{me}: the coordinator's table omits this rank")
                    return table
                message = f"{me}: {reply.get('message', 'the coordinator refused this rank')}"
                if reply.get("reason") == "timeout":
                    raise PartyTimeoutError(message)
                raise LaunchError(message)
    finally:
        ctx.destroy(linger=0)
