"""Pooling against torch.nn.functional: max (values exact, gradients routed to torch's winner),
average (within rounding), adaptive average and max; 2x2 max-pool in one comparison depth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from crypten_lite.protocols import pooling as P
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.encoding import decode, encode
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
X = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
XE = decode(encode(X, 16), 16, torch.float64)  # the encoded values torch should see
ULP = 2.0**-16

MAX_CASES = [
    {"kernel_size": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1},
    {"kernel_size": (2, 3), "stride": (1, 2), "dilation": (2, 1)},
    {"kernel_size": 3, "stride": 2, "ceil_mode": True},
]


def dec(t: torch.Tensor) -> torch.Tensor:
    return decode(t, 16, torch.float64)


def opened(party: Party, *ts: torch.Tensor) -> list[torch.Tensor]:
    out = open_shares(list(ts), party)
    assert out is not None
    return out


def test_max_pool2d_forward_and_backward(world_size: int, run_parties: Run) -> None:
    def fn(party: Party) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        x = share(X if party.rank == 0 else None, 0, party, shape=X.shape)
        res = []
        for kw in MAX_CASES:
            party.comm.stats.reset()
            out, onehot = P.max_pool2d(x, party, **kw)
            rounds = party.comm.stats.total.rounds
            ones = torch.ones(out.shape, dtype=torch.float64)
            grad = share(ones if party.rank == 0 else None, 0, party, shape=out.shape)
            g_in = P.max_pool2d_backward(grad, onehot, party, x.shape, **kw)
            o, gi = opened(party, out, g_in)
            res.append((dec(o), dec(gi), rounds))
        return res

    for res in run_parties(fn, world_size):
        for kw, (out, grad, rounds) in zip(MAX_CASES, res, strict=True):
            xr = XE.clone().requires_grad_()
            ref = F.max_pool2d(xr, **kw)
            ref.sum().backward()
            assert torch.equal(out, ref.detach()), kw
            assert torch.equal(grad, xr.grad), kw
            assert rounds == 5, kw  # one comparison depth for windows up to 10 elements


@pytest.mark.parametrize(
    "kw",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        {"kernel_size": 2, "divisor_override": 3},
    ],
)
def test_avg_pool2d(kw: dict[str, Any], run_parties: Run) -> None:
    def fn(party: Party) -> torch.Tensor:
        x = share(X if party.rank == 0 else None, 0, party, shape=X.shape)
        return dec(opened(party, P.avg_pool2d(x, party, **kw))[0])

    for got in run_parties(fn, 2):
        assert (got - F.avg_pool2d(XE, **kw)).abs().max() <= 2 * ULP


def test_adaptive_pools(world_size: int, run_parties: Run) -> None:
    sizes = [(3, 3), (4, 5), (1, 1), (9, 8)]

    def fn(party: Party) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x = share(X if party.rank == 0 else None, 0, party, shape=X.shape)
        res = []
        for s in sizes:
            avg = P.adaptive_avg_pool2d(x, party, s)
            mx, _, _ = P.adaptive_max_pool2d(x, party, s)
            a, m = opened(party, avg, mx)
            res.append((dec(a), dec(m)))
        return res

    for res in run_parties(fn, world_size):
        for s, (avg, mx) in zip(sizes, res, strict=True):
            assert (avg - F.adaptive_avg_pool2d(XE, s)).abs().max() <= 2 * ULP, s
            assert torch.equal(mx, F.adaptive_max_pool2d(XE, s)), s
