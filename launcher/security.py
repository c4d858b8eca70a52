"""Layer L6: the session secret and the CurveZMQ keys bound to it.

Every process of a session holds one *session secret* (at least 16 random bytes). From it each
process derives, deterministically and without any message, the CURVE key pair of every
participant::

    seed(name)    = HKDF-SHA256(ikm=secret, salt=b"crypten-lite/curve/v1", info=name, L=32)
    secret_key    = seed(name)                     (a Curve25519 scalar; libzmq clamps it)
    public_key    = Curve25519(secret_key, basepoint)
    name          = "rank <r>" for party r and for the dealer (r = world_size),
                    "coordinator" for the rendezvous server

Socket roles: whoever binds is the CURVE server (a party's PULL socket, the coordinator's
ROUTER socket) and presents its own derived key pair; whoever connects is a CURVE client that
presents its own key pair and pins the server's derived public key. A ZAP handler on every
process admits a client only if its long-term public key is one of the session's derived keys,
and tags each admitted connection with the client's rank as ZeroMQ "User-Id", which the
receiver compares with the sender rank in the frame header.

Consequences: a process without the secret cannot complete a handshake (it does not know the
server's key, and its own key is not on the list), so it can neither join, read nor inject.
Every holder of the secret can derive every key, so the secret authenticates *membership of the
session*, not individual ranks — matching the semi-honest model (DESIGN.md §1).

IPC transports do not use CURVE: the sockets live in a directory of mode 0700 that only the
launching user can enter (see :mod:`crypten_lite.launcher.session`).
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass, field

import zmq
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from zmq.utils import z85

from crypten_lite.errors import ConfigurationError

__all__ = [
    "COORDINATOR",
    "MIN_SECRET_BYTES",
    "Security",
    "generate_secret",
    "load_secret",
    "rank_name",
    "read_secret_fd",
]

MIN_SECRET_BYTES = 16
COORDINATOR = "coordinator"
_SALT = b"crypten-lite/curve/v1"


def rank_name(rank: int) -> str:
    """The key name of party ``rank`` (or of the dealer, ``rank == world_size``)."""
    return f"rank {rank}"


def generate_secret() -> bytes:
    """A fresh 256-bit session secret, as 64 hex characters (printable, fits in a file or env)."""
    return secrets.token_hex(32).encode("ascii")


def load_secret(
    *, path: str | os.PathLike[str] | None, value: str | None, allow_shared_file: bool = False
) -> bytes:
    """The session secret from a file (preferred) or from a string (``CRYPTEN_LITE_SECRET``).

    Surrounding whitespace is stripped, so ``echo SECRET > file`` works. Like ssh with a private
    key, a file that its group or other users may read or write is refused: anyone who can read
    it can join the session (``allow_shared_file``, the ``--allow-shared-secret-file`` flag,
    overrides this for a file deliberately shared, e.g. through a group-readable directory).

    Raises:
        ConfigurationError: the file cannot be read, is accessible to group or others, or the
            secret is shorter than :data:`MIN_SECRET_BYTES` bytes.
    """
    if path is not None:
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode & 0o777
                raw = f.read().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the session secret file {path}: {exc}") from None
        if mode & 0o077 and not allow_shared_file:
            raise ConfigurationError(
                f"the session secret file {path} has mode {mode:04o}: group or other users can "
                f"access it, and anyone who reads it can join the session; `chmod 600 {path}` "
                "(or pass --allow-shared-secret-file if sharing it is deliberate)"
            )
        origin = f"secret file {path}"
    elif value is not None:
        raw = value.encode("utf-8").strip()
        origin = "CRYPTEN_LITE_SECRET"
    else:
        raise ConfigurationError("no session secret given")
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the session secret in {origin} has {len(raw)} bytes; use at least "
            f"{MIN_SECRET_BYTES} random bytes (e.g. `crypten-lite secret FILE`)"
        )
    return raw


def read_secret_fd(fd: int) -> bytes:
    """Read a secret that a launcher wrote into the pipe ``fd`` (then closed), and close ``fd``.

    This is how a launcher hands the session secret to the processes it starts: through an
    inherited pipe, never a file, an environment variable or a command line.

    Raises:
        ConfigurationError: ``fd`` cannot be read (already consumed, or not a pipe).
    """
    chunks = []
    try:
        with os.fdopen(fd, "rb", closefd=True) as pipe:
            while chunk := pipe.read(4096):
                chunks.append(chunk)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the session secret from fd {fd}: {exc}") from None
    raw = b"".join(chunks).strip()
    if len(raw) < MIN_SECRET_BYTES:
        raise ConfigurationError(f"the session secret handed over on fd {fd} is too short")
    return raw


@dataclass(frozen=True)
class _KeyPair:
    public: bytes  # z85, 40 bytes
    secret: bytes  # z85, 40 bytes


def _derive_keypair(secret: bytes, name: str) -> _KeyPair:
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=name.encode()).derive(secret)
    secret_z85 = z85.encode(seed)
    return _KeyPair(public=zmq.curve_public(secret_z85), secret=secret_z85)


class _ZapHandler:
    """ZeroMQ's authentication hook (ZAP, RFC 27) for one context, served by a daemon thread.

    Admits a CURVE client only if its long-term public key is one of the session's derived
    keys, and sets the connection's User-Id to that key's name (``"rank 3"``). Request and
    reply frames::

        request: version "1.0", request id, domain, address, routing id, mechanism, credentials
        reply:   version "1.0", request id, status "200" | "400", status text, user id, metadata

    The REP socket is bound in the constructor, before any server socket of the context
    exists: libzmq admits everyone while no handler is bound.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], names: dict[bytes, str]) -> None:
        self._names = names  # z85 public key -> name
        self.denied = 0
        self._sock = context.socket(zmq.REP)
        self._sock.linger = 0
        self._sock.bind("inproc://zeromq.zap.01")
        # A PAIR pipe wakes the thread at once when stopping.
        wake_address = f"inproc://crypten-lite-zap-stop-{id(self)}"
        self._wake_in = context.socket(zmq.PAIR)
        self._wake_in.linger = 0
        self._wake_in.bind(wake_address)
        self._wake_out = context.socket(zmq.PAIR)
        self._wake_out.linger = 0
        self._wake_out.connect(wake_address)
        self._thread = threading.Thread(target=self._serve, name="crypten-lite-zap", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_in, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._wake_in in ready:
                    return
                if self._sock in ready:
                    self._answer(self._sock.recv_multipart())
        except zmq.ContextTerminated:  # pragma: no cover - stop() normally comes first
            return
        finally:
            self._sock.close(linger=0)
            self._wake_in.close(linger=0)

    def _answer(self, frames: list[bytes]) -> None:
        if len(frames) < 6:  # not a ZAP request (libzmq sends none); REP still owes a reply
            self._sock.send_multipart([b"1.0", b"", b"400", b"malformed ZAP request", b"", b""])
            return
        version, request_id, _domain, _address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        name = None
        if mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
            name = self._names.get(z85.encode(credentials[0]))
        if name is None:
            self.denied += 1
            reply = [version, request_id, b"400", b"key not derived from the session secret"]
            self._sock.send_multipart([*reply, b"", b""])
        else:
            self._sock.send_multipart([version, request_id, b"200", b"OK", name.encode(), b""])

    def stop(self) -> None:
        """Stop the thread and close its sockets (before the context is terminated)."""
        try:
            self._wake_out.send(b"stop")
        except zmq.ZMQError:  # pragma: no cover - context already gone
            pass
        self._thread.join(5.0)
        self._wake_out.close(linger=0)


@dataclass
class Security:
    """How this process secures its sockets: CURVE keys bound to the secret, or nothing.

    Args:
        secret: the session secret; ``None`` means plaintext sockets (IPC, or benchmarks).
        world_size: number of parties; keys exist for ranks ``0 .. world_size`` (the last one
            is the dealer's, used only when the session has one).
    """

    secret: bytes | None
    world_size: int
    _keys: dict[str, _KeyPair] = field(default_factory=dict, repr=False)
    _handlers: dict[int, _ZapHandler] = field(default_factory=dict, repr=False)

    @property
    def curve(self) -> bool:
        """Whether sockets use CurveZMQ."""
        return self.secret is not None

    def _pair(self, name: str) -> _KeyPair:
        if self.secret is None:
            raise RuntimeError("no CURVE keys without a session secret")
        pair = self._keys.get(name)
        if pair is None:
            pair = self._keys[name] = _derive_keypair(self.secret, name)
        return pair

    def public_key(self, name: str) -> bytes:
        """The z85 public key of ``name`` (``rank_name(r)`` or ``COORDINATOR``)."""
        return self._pair(name).public

    def start_authenticator(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Run the ZAP handler of ``context`` (needed once per context that has a server).

        Admits the coordinator's key and the key of every rank ``0 .. world_size``.
        """
        if not self.curve or id(context) in self._handlers:
            return
        names = [rank_name(r) for r in range(self.world_size + 1)] + [COORDINATOR]
        self._handlers[id(context)] = _ZapHandler(context, {self.public_key(n): n for n in names})

    @property
    def denied(self) -> int:
        """How many connections the ZAP handler refused (keys not derived from the secret)."""
        return sum(handler.denied for handler in self._handlers.values())

    def stop_authenticator(self) -> None:
        """Stop the ZAP handler threads (before their contexts are terminated)."""
        handlers, self._handlers = self._handlers, {}
        for handler in handlers.values():
            handler.stop()

    def make_server(self, sock: zmq.Socket[bytes], me: str) -> None:
        """Configure a binding socket to present ``me``'s key and admit only session keys.

        Starts the ZAP handler of the socket's context first if it is not running yet.
        """
        if self.curve:
            self.start_authenticator(sock.context)
            pair = self._pair(me)
            sock.curve_secretkey = pair.secret
            sock.curve_publickey = pair.public
            sock.curve_server = True

    def make_client(self, sock: zmq.Socket[bytes], me: str, server: str) -> None:
        """Configure a connecting socket to present ``me``'s key and pin ``server``'s key."""
        if self.curve:
            pair = self._pair(me)
            sock.curve_secretkey = pair.secret
            sock.curve_publickey = pair.public
            sock.curve_serverkey = self._pair(server).public
