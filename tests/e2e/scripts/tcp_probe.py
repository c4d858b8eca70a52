"""Measure a TCP path: round-trip time and one-way throughput (standard library only).

Server: ``python tcp_probe.py serve ADDR PORT`` (prints ``listening``, serves one client).
Client: ``python tcp_probe.py probe ADDR PORT NBYTES`` prints one line of JSON:
``{"rtt_ms": [10 round trips of 1 byte], "mbit_s": throughput of NBYTES to the server}``.
"""

from __future__ import annotations

import json
import socket
import sys
import time

PINGS = 10


def serve(addr: str, port: int) -> None:
    with socket.create_server((addr, port)) as server:
        print("listening", flush=True)
        server.settimeout(30.0)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30.0)
            while True:
                kind = conn.recv(1)
                if not kind:
                    return
                if kind == b"p":
                    conn.sendall(b"p")
                elif kind == b"b":
                    remaining = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "little")
                    while remaining > 0:
                        chunk = conn.recv(min(remaining, 1 << 20))
                        if not chunk:
                            return
                        remaining -= len(chunk)
                    conn.sendall(b"d")


def probe(addr: str, port: int, nbytes: int) -> None:
    with socket.create_connection((addr, port), timeout=30.0) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(PINGS):
            t = time.perf_counter()
            conn.sendall(b"p")
            conn.recv(1)
            rtts.append((time.perf_counter() - t) * 1e3)
        payload = b"x" * nbytes
        t = time.perf_counter()
        conn.sendall(b"b" + nbytes.to_bytes(8, "little"))
        conn.sendall(payload)
        conn.recv(1)
        seconds = time.perf_counter() - t
    print(json.dumps({"rtt_ms": rtts, "mbit_s": nbytes * 8 / seconds / 1e6}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        probe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
