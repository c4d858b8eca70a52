#!/usr/bin/env python3
"""Count the truncations of one BERT-base encoder layer and their 2-party local failure odds.

Runs one transformer encoder layer (hidden 768, 12 heads, MLP 3072, GeLU, post-LayerNorm, as
BERT-base) on 2 parties in threads with ``truncation="local"`` and, for every truncated
element, reconstructs the value ``x`` at the truncated scale (test instrumentation: both
parties' shares are in this one process) and adds ``(|x| + 2**k) / 2**64`` — the probability
that local truncation fails on it (:func:`crypten_lite.protocols.truncation.truncate_local`).
The sum over a pass is the expected number of failures, an upper bound on the probability
that any element fails. Elements are split into user-level products (``protocols.arithmetic``:
Linear, matmul, LayerNorm's affine) and those inside the approximations (GeLU, softmax,
rsqrt).

Multiply the per-layer figures by 12 for a 12-layer BERT-base pass. ``--scale`` multiplies
the input (activations up to about ``3 * scale``).

Usage: ``.venv/bin/python benchmarks/truncation_audit.py --seq 128 --scale 1``
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import crypten_lite as cl
from crypten_lite.config import Config
from crypten_lite.protocols import arithmetic, fused, polynomial, truncation
from crypten_lite.runtime.party import run_threads

_INTERNAL = ("elementary.py", "activations.py", "polynomial.py", "comparison.py")


class Layer(nn.Module):
    """One BERT-base encoder layer (post-LN, GeLU), written with plain torch.nn."""

    def __init__(self, hidden: int = 768, heads: int = 12, inner: int = 3072) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)
        self.ln2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, h = x.shape
        q, k, v = self.qkv(x).split(h, dim=-1)
        d = h // self.heads
        q, k, v = (t.reshape(s, self.heads, d).transpose(0, 1) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        ctx = (att.softmax(-1) @ v).transpose(0, 1).reshape(s, h)
        x = self.ln1(x + self.proj(ctx))
        return self.ln2(x + self.fc2(F.gelu(self.fc1(x))))


class Audit:
    """Pairs the two parties' truncation calls and accumulates the failure expectation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[tuple[int, int], torch.Tensor] = {}
        self.calls = [0, 0]
        self.stats = {"user": [0, 0.0, 0.0], "internal": [0, 0.0, 0.0]}  # n, E[fail], max log2

    def record(self, x: torch.Tensor, rank: int, bits: int) -> None:
        kind = "user"
        frame: Any = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.endswith(_INTERNAL):
                kind = "internal"
                break
            frame = frame.f_back
        with self.lock:
            key = (self.calls[rank], 0)
            self.calls[rank] += 1
            other = self.pending.pop(key, None)
            if other is None:
                self.pending[key] = x.clone()
                return
        value = (x + other).double().abs()
        st = self.stats[kind]
        st[0] += value.numel()
        st[1] += float(((value + 2.0**bits) / 2.0**64).sum())
        if value.numel():
            st[2] = max(st[2], math.log2(float(value.max()) + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    audit = Audit()
    real_local = truncation.truncate_local
    real_local_ = truncation.truncate_local_

    def local(x: torch.Tensor, party: Any, bits: int | None = None) -> torch.Tensor:
        k = party.frac_bits if bits is None else bits
        audit.record(x, party.rank, k)
        return real_local(x, party, bits)

    def local_(x: torch.Tensor, party: Any, bits: int) -> torch.Tensor:
        audit.record(x, party.rank, bits)
        return real_local_(x, party, bits)

    truncation.truncate_local = local  # type: ignore[assignment]
    polynomial.truncate_local = local  # type: ignore[attr-defined]
    fused.truncate_local = local  # type: ignore[attr-defined]  # lazy/settle (pending values)
    arithmetic.truncate_local_ = local_  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = Layer().eval()
    x = torch.randn(args.seq, 768) * args.scale

    def body(party: Any) -> None:
        with cl.use_party(party), torch.no_grad():
            m = cl.encrypt_module(copy.deepcopy(model))
            m(cl.cryptensor(x)).get_plain_text()

    cfg = Config(transport="inproc", dealer="tfp", truncation="local", timeout_s=600.0)
    run_threads(body, 2, config=cfg, timeout_s=3600.0)
    for kind, (n, fails, top) in audit.stats.items():
        print(
            f"{kind:9s} elements {n:.3g}  expected local failures {fails:.3g} per layer "
            f"(x12 layers: {12 * fails:.3g})  largest |x| 2**{top:.1f}"
        )


if __name__ == "__main__":
    main()
