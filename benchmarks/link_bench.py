#!/usr/bin/env python3
"""How crypten_lite's protocols fare on loopback, LAN and WAN links (2 parties + dealer).

Workloads (party 0 owns the first operand, party 1 the second; shared outside the timing):

* ``mul 1e5``: elementwise fixed-point product of two 100,000-element sharings;
* ``matmul 256``: ``(256 x 256) @ (256 x 256)``;
* ``relu 1e4``: ReLU of a 10,000-element sharing (comparison: A2B adder, bit injection).

Each repetition starts after a barrier; its time is the slowest party's; the table shows the
median of ``--reps``, party 0's communication rounds between parties and its round trips to the
dealer, and the bytes party 0 sent. Usage::

    python benchmarks/link_bench.py [--links loopback,lan,wan] [--reps 3] [--json out.json]

``lan`` and ``wan`` need root (network namespaces; see ``benchmarks/netlink.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from netlink import LINKS, launch_shaped, link_unavailable

import crypten_lite
from crypten_lite.protocols import arithmetic as A
from crypten_lite.protocols import comparison as C
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.party import Party

DEALER_TAGS = ("dealer.request", "dealer.reply")
BARRIER = "link_bench.barrier"


def _inputs(shape_x: tuple[int, ...], shape_y: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    return torch.rand(shape_x, generator=gen) * 4 - 2, torch.rand(shape_y, generator=gen) * 4 - 2


# name -> (operand shapes, the timed protocol call on shares)
WORKLOADS: dict[str, tuple[tuple[tuple[int, ...], ...], Callable[..., Any]]] = {
    "mul 1e5": (
        ((100_000,), (100_000,)),
        lambda p, x, y: A.product("mul", x, y, p, shift=p.frac_bits),
    ),
    "matmul 256": (
        ((256, 256), (256, 256)),
        lambda p, x, y: A.product("matmul", x, y, p, shift=p.frac_bits),
    ),
    "relu 1e4": (((10_000,), (1,)), lambda p, x, y: C.relu(x, p)[0]),  # y unused
}


def party_main(names: list[str], reps: int) -> dict[str, Any]:
    """Run the named workloads on this party (inside ``launch_shaped``)."""
    party: Party = crypten_lite.get_party()
    out: dict[str, Any] = {}
    for name in names:
        shapes, run = WORKLOADS[name]
        plain = _inputs(*shapes)
        x = share(plain[0] if party.rank == 0 else None, 0, party, shape=shapes[0])
        y = share(plain[1] if party.rank == 1 else None, 1, party, shape=shapes[1])
        run(party, x, y)  # warm-up (allocations, dealer streams)
        times = []
        counted: dict[str, float] = {}
        for i in range(reps):
            party.comm.barrier(BARRIER)
            party.comm.stats.reset()
            t0 = time.perf_counter()
            run(party, x, y)
            times.append(time.perf_counter() - t0)
            if i == 0:
                stats = party.comm.stats
                dealer = stats.by_tag.get("dealer.request")
                counted = {
                    "rounds": sum(
                        s.rounds for tag, s in stats.by_tag.items() if tag not in DEALER_TAGS
                    ),
                    "dealer_round_trips": dealer.messages_sent if dealer is not None else 0,
                    "bytes_sent": stats.total.bytes_sent,
                }
        out[name] = {"times": times, **counted}
    return out


def _row(per_rank: list[dict[str, Any]], name: str) -> dict[str, Any]:
    slowest = [max(ts) for ts in zip(*(r[name]["times"] for r in per_rank), strict=True)]
    first = per_rank[0][name]
    return {
        "seconds": statistics.median(slowest),
        "rounds": first["rounds"],
        "dealer_round_trips": first["dealer_round_trips"],
        "bytes_sent_rank0": first["bytes_sent"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--links", default=",".join(LINKS), help="comma list of loopback,lan,wan")
    ap.add_argument("--only", default="", help="comma list of workloads (default: all)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args(argv)
    links = [link for link in args.links.split(",") if link]
    names = [n for n in WORKLOADS if not args.only or n in args.only.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for link in links:
        reason = link_unavailable(link)
        if reason is not None:
            print(f"skipping {link}: {reason}", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        per_rank = launch_shaped(party_main, 2, args=(names, args.reps), link=link)
        results[link] = {name: _row(per_rank, name) for name in names}
        print(f"[{link}: {time.perf_counter() - t0:.1f} s including start-up]", file=sys.stderr)
    header = f"{'workload':<12}" + "".join(f"{link:>22}" for link in results)
    print(header)
    for name in names:
        cells = []
        for link in results:
            r = results[link][name]
            cells.append(
                f"{r['seconds'] * 1e3:>9.1f} ms {r['rounds']:>3}r+{r['dealer_round_trips']}d"
            )
        print(f"{name:<12}" + "".join(f"{c:>22}" for c in cells))
    print(
        "(median of the slowest party's time; r = rounds between parties, d = dealer round "
        "trips of party 0)"
    )
    for name in names:
        sent = {link: results[link][name]["bytes_sent_rank0"] for link in results}
        print(f"  {name}: party 0 sent {next(iter(sent.values()), 0) / 1e6:.2f} MB per call")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
