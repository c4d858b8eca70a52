"""Time, rounds and bytes of LayerNorm and rsqrt, exact against local truncation, same run.

Usage: ``python benchmarks/norm_timing.py [--reps 5] [--runs 3] [--modes local,dealer]
[--cases NAME,...] [--profile NAME]``; with ``PYTHONPATH`` pointing at an exported older tree
(``crypten_lite/protocols`` linked to its ``protocols/``) it times that tree the same way.

Two parties as threads over the in-process transport, trusted first party (as the session's
figures in ``benchmarks/RESULTS.md``), one torch thread each. Each case is timed ``reps`` times
after a warm-up, on every party together; the median is reported, and the runs alternate the
truncation modes so that load drift hits both. ``--profile NAME`` prints party 0's cProfile of
one case instead. Besides the wall time (the slower party's), the parties' thread CPU time
(summed; median and minimum over the reps) is reported: on a shared machine it is the
steadier figure.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import crypten_lite as cl
from crypten_lite.config import Config
from crypten_lite.runtime.party import Party, run_threads

SORT = "tottime"
GEN = torch.Generator().manual_seed(0)
X_LN = torch.randn(32, 768, generator=GEN) * 2.0 + 0.5
W_LN = torch.rand(768, generator=GEN) + 0.5
B_LN = torch.randn(768, generator=GEN)
X_RS = torch.rand(10_000, generator=GEN) * 100 + 0.01


def _layer_norm(party: Party) -> Callable[[], Any]:
    xe, w, b = cl.cryptensor(X_LN), cl.cryptensor(W_LN), cl.cryptensor(B_LN)
    return lambda: F.layer_norm(xe, (768,), w, b, 1e-5)


def _layer_norm_plain(party: Party) -> Callable[[], Any]:
    xe = cl.cryptensor(X_LN)
    return lambda: F.layer_norm(xe, (768,), None, None, 1e-5)


def _rsqrt(party: Party) -> Callable[[], Any]:
    xe = cl.cryptensor(X_RS)
    # a fresh tensor each call: rsqrt stashes its result on its input
    return lambda: torch.rsqrt(xe + 0.0)


CASES = {
    "layer_norm_32x768_noaffine": (
        _layer_norm_plain,
        lambda: F.layer_norm(X_LN, (768,), None, None, 1e-5),
    ),
    "layer_norm_32x768": (_layer_norm, lambda: F.layer_norm(X_LN, (768,), W_LN, B_LN, 1e-5)),
    "rsqrt_1e4": (_rsqrt, lambda: torch.rsqrt(X_RS)),
}


def measure(name: str, truncation: str, reps: int, profile: bool = False) -> dict[str, Any]:
    make, ref_fn = CASES[name]

    def body(party: Party) -> dict[str, Any]:
        torch.set_num_threads(1)
        with cl.use_party(party):
            fn = make(party)
            fn()  # warm-up (layouts, caches)
            times, cpu = [], []
            rounds = sent = 0
            prof = cProfile.Profile() if profile and party.rank == 0 else None
            for _ in range(reps):
                party.comm.barrier()
                st0 = party.comm.stats.total
                r0, b0 = st0.rounds, st0.bytes_sent
                t0, c0 = time.perf_counter(), time.thread_time()
                if prof:
                    prof.enable()
                out = fn()
                if prof:
                    prof.disable()
                times.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                st = party.comm.stats.total
                rounds += st.rounds - r0
                sent += st.bytes_sent - b0
            got = out.get_plain_text()
            if prof:
                pstats.Stats(prof).sort_stats(SORT).print_stats(35)
            return {
                "times": times,
                "cpu": cpu,
                "rounds": rounds / reps,
                "bytes": sent / reps,
                "err": float((got - ref_fn()).abs().max()),
            }

    cfg = Config(transport="inproc", dealer="tfp", timeout_s=60.0, truncation=truncation)
    res = run_threads(body, 2, config=cfg, timeout_s=300.0)
    t = [max(a, b) for a, b in zip(res[0]["times"], res[1]["times"], strict=True)]
    c = [a + b for a, b in zip(res[0]["cpu"], res[1]["cpu"], strict=True)]
    return {
        **res[1],
        "ms": 1e3 * statistics.median(t),
        "cpu_ms": 1e3 * statistics.median(c),
        "cpu_min": 1e3 * min(c),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--truncation", default="dealer")
    ap.add_argument("--modes", default="local,dealer")
    ap.add_argument("--cases", default=",".join(CASES))
    a = ap.parse_args()
    if a.profile:
        measure(a.profile, a.truncation, a.reps, profile=True)
        return
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(a.runs):
        for name in a.cases.split(","):
            for mode in a.modes.split(","):
                rows.setdefault((name, mode), []).append(measure(name, mode, a.reps))
    for (name, mode), rs in rows.items():
        ms = statistics.median(r["ms"] for r in rs)
        cpu = statistics.median(r["cpu_ms"] for r in rs)
        cpu_min = min(r["cpu_min"] for r in rs)
        r = rs[0]
        print(
            f"{name:26s} {mode:6s} {ms:8.2f} ms  cpu {cpu:8.2f} (min {cpu_min:6.2f}) ms  rounds {r['rounds']:5.1f}  "
            f"bytes/party {r['bytes'] / 1e6:7.3f} MB  err {r['err']:.2e}"
        )


if __name__ == "__main__":
    main()
