"""Scaled dot-product attention on secret q, k, v: all heads and rows in one softmax, and a
power-of-two scale folded into the scores' truncation (2 and 3 parties)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import crypten_lite as cl

Run = Callable[..., list[Any]]


def test_sdpa_scale_rides_in_the_scores_truncation(world_size: int, run_parties: Run) -> None:
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 3, 8, 16, generator=g) for _ in range(3))
    causal = torch.ones(8, 8, dtype=torch.bool).tril()

    def body(party: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with cl.use_party(party), torch.no_grad():
            sq, sk, sv = (cl.cryptensor(t) for t in (q, k, v))
            for name, scale in (("pow2", 0.25), ("other", 0.3)):
                before = party.comm.stats.total.rounds
                y = F.scaled_dot_product_attention(sq, sk, sv, attn_mask=causal, scale=scale)
                out[name] = (party.comm.stats.total.rounds - before, y.get_plain_text())
        return out

    for res in run_parties(body, world_size):
        for name, scale in (("pow2", 0.25), ("other", 0.3)):
            ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=scale)
            assert (res[name][1] - ref).abs().max() <= 1e-3
        # one softmax for all heads and rows; the power-of-two scale saves its truncation
        assert res["pow2"][0] == res["other"][0] - 1
