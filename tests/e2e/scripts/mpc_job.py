"""Party script of the end-to-end tests: secret-share, add, multiply, matmul, reveal.

Run by ``crypten-lite launch`` (one host or many). Every party ``r`` owns a private vector
``v_r`` (8 values in [-2, 2), from seed ``1000 + r``) and shares it. The parties compute

* ``sum``: ``v_0 + ... + v_{N-1}`` (linear: exact, no truncation),
* ``prod``: ``v_0 * v_1 * ... * v_{N-1}`` elementwise (N-1 Beaver products),
* ``matmul``: ``v_0.view(2, 4) @ v_1.view(4, 2)``,

reveal them and print one line ``RESULT {json}`` (each value rounded to 6 decimals), then
``PEERS {json}``: the endpoint this party connected to for each other rank.

Options:
    --loop N: afterwards run N more multiplications, sleeping ``--sleep`` seconds between them;
        prints ``LOOP pid=<pid>`` first (the fault tests kill processes during this loop).
    --until PATH: with ``--loop``, stop as soon as PATH exists instead of after N rounds. Party 0
        looks for the file before every multiplication and broadcasts what it saw, so every
        party stops after the same multiplication (SPMD): a test ends the session on an event
        (it writes the file) instead of hoping N rounds outlast what it does meanwhile.
    Environment ``E2E_PROTOCOL_VERSION``: pretend to be a build speaking another protocol
        version (the launcher offers no such switch; this simulates a mismatched install).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import crypten_lite
import crypten_lite.runtime.party
from crypten_lite.protocols import arithmetic
from crypten_lite.protocols.sharing import reveal, share

SIZE = 8


def private_input(rank: int) -> torch.Tensor:
    """Party ``rank``'s private vector (every party can compute any of them: for checking)."""
    gen = torch.Generator().manual_seed(1000 + rank)
    return torch.rand(SIZE, generator=gen) * 4 - 2


def expected(world_size: int) -> dict[str, list[float]]:
    """What the script computes, in plaintext torch (float64)."""
    vs = [private_input(r).double() for r in range(world_size)]
    prod = vs[0]
    for v in vs[1:]:
        prod = prod * v
    return {
        "sum": torch.stack(vs).sum(0).tolist(),
        "prod": prod.tolist(),
        "matmul": (vs[0].view(2, 4) @ vs[1].view(4, 2)).reshape(-1).tolist(),
    }


def _rounded(t: torch.Tensor | None) -> list[float]:
    assert t is not None
    return [round(float(v), 6) for v in t.reshape(-1).tolist()]


def _stop_requested(path: str, party: crypten_lite.runtime.party.Party) -> bool:
    """Party 0's view of "does ``path`` exist?", the same on every party (one broadcast)."""
    seen = torch.tensor(1 if party.rank == 0 and os.path.exists(path) else 0, dtype=torch.uint8)
    return bool(party.comm.broadcast(seen if party.rank == 0 else None, 0, "e2e.until").item())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loop", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.05)
    ap.add_argument("--until", default=None)
    args = ap.parse_args()
    version = os.environ.get("E2E_PROTOCOL_VERSION")
    if version:
        crypten_lite.runtime.party.PROTOCOL_VERSION = int(version)

    party = crypten_lite.init()
    n, rank = party.world_size, party.rank
    shares = [
        share(private_input(r) if r == rank else None, r, party, shape=(SIZE,)) for r in range(n)
    ]
    total = shares[0]
    prod = shares[0]
    for s in shares[1:]:
        total = total + s  # shares of a sum: the sum of the shares
        prod = arithmetic.product("mul", prod, s, party, shift=party.frac_bits)
    mm = arithmetic.product(
        "matmul", shares[0].view(2, 4), shares[1].view(4, 2), party, shift=party.frac_bits
    )
    result = {
        "sum": _rounded(reveal(total, party, dtype=torch.float64)),
        "prod": _rounded(reveal(prod, party, dtype=torch.float64)),
        "matmul": _rounded(reveal(mm, party, dtype=torch.float64)),
    }
    print("RESULT " + json.dumps(result), flush=True)
    # Where this party's peers were reached (ZeroMQ transport only): proves the hosts.
    peers = getattr(party.comm, "peer_endpoints", {})
    print("PEERS " + json.dumps({str(r): ep for r, ep in peers.items()}), flush=True)

    if args.loop:
        print(f"LOOP pid={os.getpid()}", flush=True)
        for _ in range(args.loop):
            if args.until is not None and _stop_requested(args.until, party):
                break
            arithmetic.product("mul", shares[0], shares[1], party, shift=party.frac_bits)
            time.sleep(args.sleep)  # pacing only (keeps the loop from hogging the CPU)
        print("LOOP done", flush=True)
    crypten_lite.uninit()


if __name__ == "__main__":
    main()
