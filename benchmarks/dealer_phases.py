"""Party 0's dealer cost online: no prefetch, prefetch, and an explicit offline phase.

Runs ``mlp_b1``, ``lenet_b1`` and a BERT encoder layer of the CrypTen peer's ``workloads.py``
(``CRYPTEN_PEER_DIR``, default ``../shared/peers/crypten``) on 2 parties + the dealer process
(real processes through the launcher, IPC). For every mode it reports, per party, the rounds of
one forward pass (every counted communicator call: dealer exchanges count only when they block,
see ``crypten_lite.runtime.dealer.third_party``), party 0's dealer messages, and the online time (max
over parties, median of ``--reps`` passes after one warm-up pass; and each party's CPU time,
steadier on a shared machine, and the seconds party 0 waited for dealer replies); ``plan``
also reports the
offline time of :meth:`crypten_lite.Plan.prepare` and its dealer bytes.

Modes: ``noprefetch`` (the dealing of main: one request per batch, collected after the
protocol's round; its rounds under main's counting are party 1's plus two per dealer batch),
``prefetch`` (predicted batches sent ahead), ``plan`` (``plan``/``prepare``/``online``).

    .venv/bin/python benchmarks/dealer_phases.py --only mlp_b1,lenet_b1,bert_layer_s32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import crypten_lite as cl
from crypten_lite.config import Config

PEER_ENV = "CRYPTEN_PEER_DIR"


def peer() -> ModuleType:
    root = Path(
        os.environ.get(PEER_ENV, Path(__file__).resolve().parents[1] / "../shared/peers/crypten")
    )
    spec = importlib.util.spec_from_file_location("peer_workloads", root / "workloads.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(name: str) -> tuple[Any, Any, torch.Tensor]:
    """(plaintext callable, encrypted callable, input) of a workload, inside a party."""
    w = peer()
    if name.startswith("bert_layer_s"):
        spec = dict(next(s for s in w.TRANSFORMER if s["name"] == "bert_layer_s128"))
        spec["seq"] = int(name.rsplit("s", 1)[1])
        p, x = w.transformer_params(spec), w.transformer_input(spec)
        pe = {k: cl.cryptensor(v, src=0) for k, v in p.items()}

        def plain(t: torch.Tensor) -> torch.Tensor:
            return w.transformer_layer(w.TorchOps, spec, t, p)  # type: ignore[no-any-return]

        def enc(t: Any) -> Any:
            return w.transformer_layer(w.TorchOps, spec, t, pe)

        return plain, enc, x
    spec = next(s for s in w.INFERENCE if s["name"] == name)
    net = w.seeded_model(spec["model"], spec["seed"])
    return net, cl.encrypt_module(copy.deepcopy(net), src=0), w.inference_input(spec)


def dealer_bytes(stats: Any) -> int:
    return sum(
        s.bytes_sent + s.bytes_received for t, s in stats.by_tag.items() if t.startswith("dealer.")
    )


def party_main(name: str, mode: str, reps: int) -> dict[str, Any]:
    party = cl.get_party()
    if mode == "noprefetch":
        party.dealer.prefetch = False  # type: ignore[attr-defined]
    with torch.no_grad():
        plain, enc, x = build(name)
        xe = cl.cryptensor(x, src=1)
        plan = cl.plan(enc, xe) if mode == "plan" else None
        if plan is None:
            enc(xe)  # the warm-up pass (prefetch learns the request stream from it)
        rows = []
        for _ in range(reps):
            offline_s = 0.0
            offline_bytes = 0
            if plan is not None:
                party.comm.barrier("bench.barrier")
                party.comm.stats.reset()
                t0 = time.perf_counter()
                plan.prepare()
                offline_s = time.perf_counter() - t0
                offline_bytes = dealer_bytes(party.comm.stats)
            party.comm.barrier("bench.barrier")
            party.comm.stats.reset()
            c0, t0 = time.process_time(), time.perf_counter()
            with plan.online() if plan is not None else contextlib.nullcontext():
                y = enc(xe)
            online_s, online_cpu_s = time.perf_counter() - t0, time.process_time() - c0
            st = party.comm.stats.snapshot()
            dealer_msgs = sum(
                s.messages_sent for t, s in st.by_tag.items() if t.startswith("dealer.")
            )
            rows.append(
                dict(
                    rounds=st.total.rounds,
                    dealer_msgs=dealer_msgs,
                    dealer_bytes=dealer_bytes(st),
                    bytes=st.total.bytes_sent + st.total.bytes_received,
                    online_s=online_s,
                    online_cpu_s=online_cpu_s,
                    dealer_wait_s=sum(
                        s.wait_s for t, s in st.by_tag.items() if t.startswith("dealer.")
                    ),
                    offline_s=offline_s,
                    offline_bytes=offline_bytes,
                )
            )
        err = (y.get_plain_text() - plain(x)).abs().max().item()
    return dict(rows=rows, err=err, hits=getattr(party.dealer, "predicted", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="mlp_b1,lenet_b1,bert_layer_s32")
    ap.add_argument("--modes", default="noprefetch,prefetch,plan")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    out = []
    for name in args.only.split(","):
        for mode in args.modes.split(","):
            res = cl.launch(
                party_main,
                2,
                args=(name, mode, args.reps),
                dealer=True,
                config=Config(timeout_s=120.0),
                timeout_s=1800.0,
            )
            online = [max(r["rows"][i]["online_s"] for r in res) for i in range(args.reps)]
            offline = [max(r["rows"][i]["offline_s"] for r in res) for i in range(args.reps)]
            cpu = [[r["rows"][i]["online_cpu_s"] for i in range(args.reps)] for r in res]
            row = dict(
                workload=name,
                mode=mode,
                rounds_p0=res[0]["rows"][-1]["rounds"],
                rounds_p1=res[1]["rows"][-1]["rounds"],
                dealer_msgs_p0=res[0]["rows"][-1]["dealer_msgs"],
                dealer_MB_online_p0=res[0]["rows"][-1]["dealer_bytes"] / 1e6,
                online_ms=1e3 * statistics.median(online),
                online_cpu_ms_p0=1e3 * statistics.median(cpu[0]),
                online_cpu_ms_p1=1e3 * statistics.median(cpu[1]),
                dealer_wait_ms_p0=1e3
                * statistics.median(r["dealer_wait_s"] for r in res[0]["rows"]),
                offline_ms=1e3 * statistics.median(offline),
                offline_dealer_MB_p0=res[0]["rows"][-1]["offline_bytes"] / 1e6,
                max_abs_err=res[0]["err"],
                predicted_batches=res[0]["hits"],
            )
            out.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
