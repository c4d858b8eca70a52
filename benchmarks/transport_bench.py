"""Transport micro-benchmark: crypten_lite's ZeroMQ communicator against raw pyzmq.

Two processes play ping-pong: rank 0 sends a message and waits for the echo, rank 1 echoes.
For every transport (ipc, tcp) with and without CurveZMQ, and for 8 B and 8 MB payloads, the
same two processes measure

* raw pyzmq: PUSH/PULL sockets sending the same two frames (a wire header and the payload,
  zero-copy above pyzmq's copy threshold) and receiving them (zero-copy likewise), and
* ours: ``ZmqCommunicator.send`` / ``recv`` of a tensor (header encoding and validation,
  sequence and tag checks, statistics, a fresh tensor per received message).

The table also shows the transport layer alone (``ZmqCommunicator._post`` / ``_fetch``, a
pre-encoded header), which separates this layer's cost from the bookkeeping of the
``Communicator`` base class. The variants alternate in 40 short blocks, so load from other
processes on the machine hits all of them alike. Latency is the median round trip; throughput
is ``2 * size / median round trip`` (a round trip moves the payload twice). Targets: ours adds
at most 20 % latency and loses at most 10 % throughput.

Usage: ``python benchmarks/transport_bench.py [--rounds 2000] [--big-rounds 40]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import zmq

from crypten_lite.launcher.rendezvous import Coordinator, rendezvous
from crypten_lite.launcher.security import Security, generate_secret, rank_name
from crypten_lite.launcher.zmq_comm import ZmqCommunicator
from crypten_lite.runtime.wire import encode_header, tensor_payload

SIZES = {"8 B": 8, "8 MB": 8 << 20}
BLOCKS = 40  # raw, layer and ours alternate this many times per size (spreads out load spikes)


def _raw_pair(rank: int, comm: ZmqCommunicator, security: Security, bind: str):  # type: ignore[no-untyped-def]
    """Raw PUSH/PULL sockets between the two ranks, set up like the communicator's."""
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    security.start_authenticator(ctx)
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 0
    security.make_server(pull, rank_name(rank))
    pull.bind(bind)
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT).encode()
    theirs = comm.exchange(torch.frombuffer(bytearray(endpoint), dtype=torch.uint8), "endpoint")
    push = ctx.socket(zmq.PUSH)
    push.sndhwm = 0
    security.make_client(push, rank_name(rank), rank_name(1 - rank))
    push.connect(bytes(theirs[1 - rank].numpy()).decode())
    return ctx, push, pull


def _measure(  # type: ignore[no-untyped-def]
    rank: int, comm: ZmqCommunicator, push, pull, size: int, rounds: int
) -> dict[str, list[float]]:
    """Round-trip times of raw pyzmq, the transport layer alone, and the full communicator."""
    peer = 1 - rank
    tensor = torch.zeros(size, dtype=torch.uint8)
    header = encode_header(rank, 0, "bench", tensor.dtype, tuple(tensor.shape))
    payload = tensor_payload(tensor)
    big = size >= zmq.COPY_THRESHOLD
    per_block = max(1, rounds // BLOCKS)

    def raw_once() -> None:
        if rank == 0:
            push.send_multipart((header, payload), copy=not big)
            pull.recv_multipart(copy=not big)
        else:
            pull.recv_multipart(copy=not big)
            push.send_multipart((header, payload), copy=not big)

    def transport_once() -> None:
        # The transport layer alone (ZmqCommunicator._post/_fetch): no header encoding,
        # sequence/tag checks or statistics of the Communicator base class.
        if rank == 0:
            comm._post(peer, header, payload)
            comm._fetch(peer, 60)
        else:
            comm._fetch(peer, 60)
            comm._post(peer, header, payload)
        comm._wait_sent()

    def ours_once() -> None:
        if rank == 0:
            comm.send(peer, tensor, "bench")
            comm.recv(peer, "bench")
        else:
            comm.recv(peer, "bench")
            comm.send(peer, tensor, "bench")

    samples: dict[str, list[float]] = {"raw": [], "transport": [], "ours": []}
    variants = (("raw", raw_once), ("transport", transport_once), ("ours", ours_once))
    for _ in range(max(2, per_block // 4)):  # warm-up
        for _, once in variants:
            once()
    for _ in range(BLOCKS):
        for name, once in variants:
            for _ in range(per_block):
                start = time.perf_counter()
                once()
                samples[name].append(time.perf_counter() - start)
    return samples


def child(ns: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    rank = ns.child
    secret = Path(ns.secret_file).read_bytes() if ns.curve else None
    security = Security(secret, 2)
    bind = f"ipc://{ns.run_dir}/rank-{rank}" if ns.transport == "ipc" else "tcp://127.0.0.1:*"
    comm = ZmqCommunicator(rank, 2, bind=bind, security=security, timeout_s=60)
    table = rendezvous(
        coordinator=ns.coordinator,
        rank=rank,
        world_size=2,
        has_dealer=False,
        transport=ns.transport,
        endpoint=comm.endpoint,
        security=security,
        timeout_s=60,
    )
    comm.connect_peers(table)
    raw_bind = f"ipc://{ns.run_dir}/raw-{rank}" if ns.transport == "ipc" else "tcp://127.0.0.1:*"
    raw_security = Security(secret, 2)
    ctx, push, pull = _raw_pair(rank, comm, raw_security, raw_bind)
    results = {
        label: _measure(
            rank, comm, push, pull, size, ns.big_rounds if size >= zmq.COPY_THRESHOLD else ns.rounds
        )
        for label, size in SIZES.items()
    }
    comm.barrier("done")
    if rank == 0:
        print(json.dumps(results))
    push.close()
    pull.close()
    raw_security.stop_authenticator()
    ctx.term()
    comm.close()


def run_case(
    transport: str, curve: bool, ns: argparse.Namespace
) -> dict[str, dict[str, list[float]]]:
    run_dir = Path(tempfile.mkdtemp(prefix="clbench-", dir="/tmp"))
    secret_file = run_dir / "secret"
    secret_file.write_bytes(generate_secret())
    security = Security(secret_file.read_bytes() if curve else None, 2)
    bind = f"ipc://{run_dir}/coordinator" if transport == "ipc" else "tcp://127.0.0.1:*"
    coordinator = Coordinator(
        bind=bind,
        world_size=2,
        has_dealer=False,
        transport=transport,
        security=security,
        timeout_s=60,
    )
    coordinator.start()
    argv = [
        sys.executable,
        __file__,
        "--coordinator",
        coordinator.endpoint,
        "--transport",
        transport,
        "--run-dir",
        str(run_dir),
        "--secret-file",
        str(secret_file),
        "--rounds",
        str(ns.rounds),
        "--big-rounds",
        str(ns.big_rounds),
    ] + (["--curve"] if curve else [])
    procs = [
        subprocess.Popen([*argv, "--child", str(r)], stdout=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    try:
        out, _ = procs[0].communicate(timeout=600)
        procs[1].wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        coordinator.close()
        for f in run_dir.iterdir():
            f.unlink()
        run_dir.rmdir()
    if procs[0].returncode != 0:
        raise SystemExit(f"benchmark child failed for {transport} curve={curve}")
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}us" if seconds < 1e-3 else f"{seconds * 1e3:.2f}ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="round trips for 8 B")
    parser.add_argument("--big-rounds", type=int, default=40, help="round trips for 8 MB")
    parser.add_argument(
        "--cases",
        default="ipc,ipc+curve,tcp,tcp+curve",
        help="comma-separated subset of ipc, ipc+curve, tcp, tcp+curve",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--transport", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", help=argparse.SUPPRESS)
    parser.add_argument("--curve", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child is not None:
        child(ns)
        return
    print(
        f"transport benchmark: 2 processes on {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"
    )
    head = (
        f"{'transport':<10}{'curve':<7}{'size':<6}{'raw RTT':>11}{'layer RTT':>11}"
        f"{'ours RTT':>11}{'lat ratio':>10}{'raw MB/s':>10}{'ours MB/s':>10}{'tput ratio':>11}"
    )
    print(head)
    print("-" * len(head))
    for case in ns.cases.split(","):
        transport, curve = case.split("+")[0], case.endswith("+curve")
        if transport not in ("ipc", "tcp"):
            raise SystemExit(f"unknown case {case!r}")
        results = run_case(transport, curve, ns)
        for label, size in SIZES.items():
            raw = statistics.median(results[label]["raw"])
            layer = statistics.median(results[label]["transport"])
            ours = statistics.median(results[label]["ours"])
            raw_tp, ours_tp = 2 * size / raw / 1e6, 2 * size / ours / 1e6
            print(
                f"{transport:<10}{'yes' if curve else 'no':<7}{label:<6}"
                f"{_time(raw):>11}{_time(layer):>11}{_time(ours):>11}{ours / raw:>10.2f}"
                f"{raw_tp:>10.1f}{ours_tp:>10.1f}{ours_tp / raw_tp:>11.2f}",
                flush=True,
            )
    print(
        "RTT = median round trip; layer = ZmqCommunicator._post/_fetch only; ours = "
        "Communicator.send/recv\nlat ratio = ours/raw (target <= 1.20); "
        "tput ratio = ours/raw (target >= 0.90)"
    )


if __name__ == "__main__":
    main()
