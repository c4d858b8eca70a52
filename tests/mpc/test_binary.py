"""Binary (XOR) sharing: local ops, batched AND layers and the k-input AND gate, for 2 and 3
parties and both dealers, against plain integer bit operations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from crypten_lite.protocols import binary
from crypten_lite.protocols.conversion import a2b
from crypten_lite.protocols.opening import open_xor_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]


def words(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-(1 << 63), (1 << 63) - 1, (n,), generator=g)
    w[:4] = torch.tensor([0, -1, -(1 << 63), (1 << 63) - 1])
    return w


def xor_share(v: torch.Tensor, party: Party) -> torch.Tensor:
    """A random XOR sharing of ``v`` (party 0's value), made with A2B of an arithmetic sharing."""
    return a2b(share(v if party.rank == 0 else None, 0, party, shape=v.shape, frac_bits=0), party)


def opened(t: torch.Tensor, party: Party) -> torch.Tensor:
    out = open_xor_shares([t], party)
    assert out is not None
    return out[0]


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_and_layers_and_local_ops(world_size: int, dealer: str, run_parties: Run) -> None:
    x, y = words(200, 1), words(200, 2)

    def fn(party: Party) -> dict[str, torch.Tensor]:
        sx, sy = xor_share(x, party), xor_share(y, party)
        party.comm.stats.reset()
        a, b = binary.and_many([(sx, sy), (sx, binary.not_(sy, party))], party)
        rounds = party.comm.stats.total.rounds
        single = binary.and_(sx, sy, party)
        local = {
            "xor": binary.xor(sx, sy),
            "xor_pub": binary.xor_public(sx, y, party),
            "not": binary.not_(sx, party),
            "and_pub": binary.and_public(sx, y),
            "lshift": binary.lshift(sx, 5),
            "rshift": binary.rshift(sx, 7),
        }
        out = {k: opened(v, party) for k, v in local.items()}
        out |= {"and": opened(a, party), "andnot": opened(b, party), "and1": opened(single, party)}
        out["rounds"] = torch.tensor(rounds)
        return out

    for res in run_parties(fn, world_size, dealer=dealer):
        assert torch.equal(res["and"], x & y)
        assert torch.equal(res["and1"], x & y)
        assert torch.equal(res["andnot"], x & ~y)
        assert torch.equal(res["xor"], x ^ y)
        assert torch.equal(res["xor_pub"], x ^ y)
        assert torch.equal(res["not"], ~x)
        assert torch.equal(res["and_pub"], x & y)
        assert torch.equal(res["lshift"], x << 5)
        assert torch.equal(res["rshift"], (x >> 7) & ((1 << 57) - 1))
        if dealer == "tfp":
            assert int(res["rounds"]) == 1  # one AND layer, one round


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_k_input_and_is_one_round(world_size: int, dealer: str, run_parties: Run) -> None:
    g = torch.Generator().manual_seed(7)
    cases = {k: torch.randint(0, 2, (70, k), generator=g) for k in range(1, 11)}
    for bits in cases.values():
        bits[0:3] = 1  # every AND sees true cases

    def fn(party: Party) -> dict[int, tuple[torch.Tensor, int]]:
        out = {}
        for k, bits in cases.items():
            sh = xor_share(bits.reshape(-1), party).reshape(bits.shape) & 1
            party.comm.stats.reset()
            z = binary.and_k(sh, party)
            rounds = party.comm.stats.total.rounds
            out[k] = (opened(z, party), rounds)
        return out

    for res in run_parties(fn, world_size, dealer=dealer):
        for k, bits in cases.items():
            got, rounds = res[k]
            assert torch.equal(got, bits.prod(-1)), k
            if dealer == "tfp":
                assert rounds == (0 if k == 1 else 1)


def test_and_k_rejects_too_many_inputs(run_parties: Run) -> None:
    def fn(party: Party) -> None:
        with pytest.raises(ValueError, match="inputs"):
            binary.and_k(torch.zeros(3, 11, dtype=torch.int64), party)

    run_parties(fn, 2)
