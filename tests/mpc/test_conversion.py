"""A2B, B2A of words and bits, and bit-times-value injection: exact on the whole ring, for 2 and
3 parties and both dealers; round counts as documented."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from crypten_lite.protocols import conversion
from crypten_lite.protocols.opening import open_shares, open_xor_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]


def ring_values(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-(1 << 63), (1 << 63) - 1, (n,), generator=g)
    v[:6] = torch.tensor([0, 1, -1, -(1 << 63), (1 << 63) - 1, 1 << 40])
    return v


def share_ring(v: torch.Tensor, party: Party, src: int = 0) -> torch.Tensor:
    return share(v if party.rank == src else None, src, party, shape=v.shape, frac_bits=0)


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_a2b_then_b2a_round_trip(world_size: int, dealer: str, run_parties: Run) -> None:
    v = ring_values(300, 3).reshape(20, 15)

    def fn(party: Party) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        x = share_ring(v, party, src=party.world_size - 1)
        party.comm.stats.reset()
        xb = conversion.a2b(x, party)
        a2b_rounds = party.comm.stats.total.rounds
        party.comm.stats.reset()
        xa = conversion.b2a(xb, party)
        b2a_rounds = party.comm.stats.total.rounds
        (wb,) = open_xor_shares([xb], party) or []
        (wa,) = open_shares([xa], party) or []
        return wb, wa, a2b_rounds, b2a_rounds

    for wb, wa, r1, r2 in run_parties(fn, world_size, dealer=dealer):
        assert torch.equal(wb, v)
        assert torch.equal(wa, v)
        if dealer == "tfp":
            assert (r1, r2) == (7, 1)


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_bit_injection(world_size: int, dealer: str, run_parties: Run) -> None:
    v = ring_values(130, 4)
    bits = v & 1

    def fn(party: Party) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        x = share_ring(v, party)
        xb = conversion.a2b(x, party) & 1  # XOR shares of the low bit
        party.comm.stats.reset()
        b = conversion.b2a_bits(xb, party)
        r1 = party.comm.stats.total.rounds
        party.comm.stats.reset()
        bv = conversion.bit_mul(xb.view(13, 10), x.view(13, 10), party)
        r2 = party.comm.stats.total.rounds
        (ob, obv) = open_shares([b, bv], party) or []
        return ob, obv, r1, r2

    for ob, obv, r1, r2 in run_parties(fn, world_size, dealer=dealer):
        assert torch.equal(ob, bits)
        assert torch.equal(obv.reshape(-1), bits * v)
        if dealer == "tfp":
            assert (r1, r2) == (1, 1)
