"""max/min/argmax/argmin over a dimension: exact values and one-hots with torch's tie rule
(lowest index), single groups (one comparison depth) and multi-level trees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from crypten_lite.protocols import reduction as R
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]


def share_ring(v: torch.Tensor, party: Party) -> torch.Tensor:
    return share(v if party.rank == 0 else None, 0, party, shape=v.shape, frac_bits=0)


def first_onehot(x: torch.Tensor, dim: int, largest: bool) -> torch.Tensor:
    idx = (x if largest else -x).argmax(dim, keepdim=True)  # torch: first index on ties
    return torch.zeros_like(x).scatter_(dim, idx, 1)


@pytest.mark.parametrize(
    ("shape", "dim", "rounds"),
    [
        ((9, 2), 1, 4),
        ((7, 4), -1, 5),
        ((3, 10), 1, 5),
        ((3, 16), 1, 9),  # a level of pairs, then 8: 4 + 5 rounds
        ((2, 37), 1, 10),
        ((2, 128), 1, 14),  # (2, 8, 8): 14 rounds where (6, 5, 5) takes 15
        ((4, 6, 5), 0, 5),
    ],
)
def test_max_and_argmax_exact_with_ties(
    world_size: int, shape: tuple[int, ...], dim: int, rounds: int, run_parties: Run
) -> None:
    g = torch.Generator().manual_seed(len(shape) * 10 + shape[-1])
    x = torch.randint(-4, 4, shape, generator=g) << 14  # many ties
    x.view(-1)[:2] = torch.tensor([(1 << 62) - 1, -(1 << 62) + 1])

    def fn(party: Party) -> tuple[list[torch.Tensor], int]:
        sx = share_ring(x, party)
        party.comm.stats.reset()
        v, oh = R.max_dim(sx, party, dim, onehot=True)
        used = party.comm.stats.total.rounds
        vmin, ohmin = R.min_dim(sx, party, dim, keepdim=True, onehot=True)
        assert oh is not None and ohmin is not None
        outs = open_shares(
            [v, oh, vmin, ohmin, R.argmax(sx, party, dim), R.argmin(sx, party, dim)], party
        )
        assert outs is not None
        return outs, used

    for (v, oh, vmin, ohmin, am, ami), used in run_parties(fn, world_size):
        assert torch.equal(v, x.amax(dim))
        assert torch.equal(vmin, x.amin(dim, keepdim=True))
        assert torch.equal(oh, first_onehot(x, dim, True))
        assert torch.equal(am, first_onehot(x, dim, True))
        assert torch.equal(ohmin, first_onehot(x, dim, False))
        assert torch.equal(ami, first_onehot(x, dim, False))
        assert used == rounds


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_values_only_long_dimension(dealer: str, run_parties: Run) -> None:
    x = torch.randn(3, 130, generator=torch.Generator().manual_seed(5))
    ring = torch.round(x * 2**16).long()

    def fn(party: Party) -> torch.Tensor:
        v, oh = R.max_dim(share_ring(ring, party), party, 1)
        assert oh is None
        out = open_shares([v], party)
        assert out is not None
        return out[0]

    for got in run_parties(fn, 2, dealer=dealer):
        assert torch.equal(got, ring.amax(1))
