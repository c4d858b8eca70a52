"""A user-space delay line: every IP packet routed through a TUN device is held for a fixed time.

The kernel of the test machines has no ``netem`` qdisc, so one-way delay is added here instead.
The router namespace of :class:`tests.netns.network.Network` sends every forwarded packet into
the TUN device (policy routing, see that module); this process reads each packet, holds it for
``--delay-ms`` and writes it back into the same device, where the kernel routes it on to its
destination host. Packets are IP datagrams, so TCP (and its handshakes, ACK clocking and
retransmissions) sees a real path with ``2 * delay`` round-trip time; bandwidth is limited
separately by ``tc tbf`` on the veth links.

Run as a script inside the router namespace (standard library only, so it starts in tens of
milliseconds)::

    ip netns exec ROUTER python delayline.py --dev dl0 --delay-ms 20

It prints ``ready`` once attached to the device and runs until killed. Packets that would make
the queue exceed ``--max-queue-bytes`` are dropped, like a router's full buffer.

Design: one thread, one non-blocking file descriptor, a FIFO of ``(due time, packet)`` — the
delay is constant, so arrival order is release order and no heap is needed. ``select`` sleeps
until the next packet is due or a new one arrives.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_READ_BATCH = 512


def open_tun(name: str) -> int:
    """Attach to the (persistent) TUN device ``name`` of this namespace; non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    ifr = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI).ljust(40, b"\0")
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


def run(fd: int, delay_s: float, max_queue_bytes: int) -> None:
    """Forward packets from ``fd`` back into ``fd`` after ``delay_s`` seconds, forever."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    queued = 0
    while True:
        if queue:
            timeout = max(0.0, queue[0][0] - time.monotonic())
            readable, _, _ = select.select([fd], [], [], timeout)
        else:
            readable, _, _ = select.select([fd], [], [])
        now = time.monotonic()
        if readable:
            for _ in range(_READ_BATCH):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if queued + len(packet) > max_queue_bytes:
                    continue  # buffer full: drop, as a router would
                queue.append((now + delay_s, packet))
                queued += len(packet)
        while queue and queue[0][0] <= now:
            _, packet = queue.popleft()
            queued -= len(packet)
            try:
                os.write(fd, packet)
            except OSError:
                pass  # e.g. the destination route vanished (a partition): the packet is lost


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", required=True, help="name of the persistent TUN device")
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay per packet")
    ap.add_argument("--max-queue-bytes", type=int, default=64 << 20)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fd = open_tun(args.dev)
    print("ready", flush=True)
    try:
        run(fd, args.delay_ms / 1000.0, args.max_queue_bytes)
    except KeyboardInterrupt:
        pass
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
