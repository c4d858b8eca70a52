"""A rogue host without the session secret attacks the sockets of a running session.

Usage: ``python rogue.py TARGETS_JSON`` where TARGETS_JSON is a list of
``{"name", "endpoint": "tcp://HOST:PORT", "server_key": z85 public key}``. The server's public
key is given on purpose: public keys are not secret, so the rogue gets the best start possible.

Per target (all targets at once, one thread each) it tries, each until the socket monitor
reports the outcome of the handshake (at most ``ATTEMPT_S`` seconds, a bound for a broken run,
not a synchronisation: a busy machine only makes the wait longer):

* ``null``: a plaintext (NULL mechanism) PUSH socket sending a well-formed crypten_lite frame;
* ``curve_random_key``: a CURVE client with a fresh key pair, pinning the real server key;
* ``curve_wrong_secret``: a CURVE client whose keys derive from a different session secret
  (what a misconfigured or malicious member of another session would have);
* ``tcp_connected``: whether a raw TCP connection could be opened at all (then garbage is sent).

It prints ``REPORT {json}``: per target, the socket-monitor events seen for each attempt
(``HANDSHAKE_SUCCEEDED`` must never appear) and ``tcp_connected``.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any

import torch
import zmq
from zmq.utils.monitor import parse_monitor_message

from crypten_lite.launcher.security import Security, rank_name
from crypten_lite.runtime.wire import encode_header

ATTEMPT_S = 30.0
_EVENTS = {
    getattr(zmq, name): name.removeprefix("EVENT_")
    for name in dir(zmq)
    if name.startswith("EVENT_") and isinstance(getattr(zmq, name), int)
}


def _attempt(
    ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, setup: Any, *, curve: bool
) -> list[str]:
    """The monitor events of one attempt, up to the handshake's outcome.

    A CURVE client learns the outcome as ``HANDSHAKE_*``; a NULL client facing a CURVE server
    may only see the server hang up (``DISCONNECTED``).
    """
    sock = ctx.socket(zmq.PUSH)
    setup(sock)
    monitor = sock.get_monitor_socket()
    sock.connect(endpoint)
    t = torch.zeros(4, dtype=torch.int64)
    for seq in range(3):  # would be party 1's first messages, if anything got through
        try:  # never block here: a PUSH socket without a ready peer would wait forever
            sock.send_multipart(
                [encode_header(1, seq, "setup.config", t.dtype, (4,)), t.numpy()],
                flags=zmq.NOBLOCK,
            )
        except zmq.Again:
            break
    events: list[str] = []
    deadline = time.monotonic() + ATTEMPT_S
    while time.monotonic() < deadline:
        if monitor.poll(50):
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            events.append(_EVENTS.get(event, str(event)))
            if events[-1].startswith("HANDSHAKE") or (not curve and events[-1] == "DISCONNECTED"):
                break
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)
    return events


def _raw_tcp(endpoint: str) -> bool:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=3.0) as s:
            s.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"GARBAGE" * 100)
            time.sleep(0.2)
        return True
    except OSError:
        return False


def _attack(
    ctx: zmq.Context[zmq.Socket[bytes]], target: dict[str, str], wrong: Security
) -> dict[str, Any]:
    endpoint, server_key = target["endpoint"], target["server_key"].encode()
    public, secret = zmq.curve_keypair()

    def curve_random(sock: zmq.Socket[bytes]) -> None:
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = server_key

    def curve_wrong(sock: zmq.Socket[bytes]) -> None:
        server = "coordinator" if target["name"] == "coordinator" else rank_name(0)
        wrong.make_client(sock, rank_name(1), server)

    return {
        "tcp_connected": _raw_tcp(endpoint),
        "null": _attempt(ctx, endpoint, lambda sock: None, curve=False),
        "curve_random_key": _attempt(ctx, endpoint, curve_random, curve=True),
        "curve_wrong_secret": _attempt(ctx, endpoint, curve_wrong, curve=True),
    }


def main() -> int:
    targets = json.loads(sys.argv[1])
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    wrong = Security(b"not-the-session-secret-0123456789abcdef", 2)
    report: dict[str, dict[str, Any]] = {}

    def run(target: dict[str, str]) -> None:
        report[target["name"]] = _attack(ctx, target, wrong)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    # Every attack ends by itself (no blocking send; each attempt stops at its handshake
    # outcome or its own ATTEMPT_S deadline; the raw TCP probe within 3.2 s): wait for them
    # all. The bound below is only a guard against a broken run, not a synchronisation.
    guard = time.monotonic() + 3 * ATTEMPT_S + 30
    for t in threads:
        t.join(max(0.0, guard - time.monotonic()))
    ctx.destroy(linger=0)
    print("REPORT " + json.dumps(report), flush=True)
    return 0 if len(report) == len(targets) else 1


if __name__ == "__main__":
    sys.exit(main())
