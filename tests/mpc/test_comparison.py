"""Comparisons are exact: every result equals plain torch on every input, including 0, the
ends of the ring (ltz) or of the fixed-point range, and neighbours one ulp apart; for 2 and 3
parties, both dealers for the core (ltz); costs as documented."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypten_lite.protocols import comparison as C
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
F = 16
TOP = (1 << 62) - 1  # x - y never overflows for |x|, |y| <= TOP


def edges() -> torch.Tensor:
    base = torch.tensor([0, 1, 2, 1 << F, 3 << (F - 1), TOP, TOP - 1, 1 << 40, 12345])
    return torch.cat([base, -base])


def pairs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-point ring pairs: equal, one ulp apart either way, random, and the range ends."""
    g = torch.Generator().manual_seed(seed)
    e = edges()
    r = torch.randint(-TOP, TOP, (n,), generator=g) >> torch.randint(0, 62, (n,), generator=g)
    base = torch.cat([e, r])
    x = torch.cat([base, base, base + 1, base - 1, base, -base])
    y = torch.cat([base, base + 1, base, base, -base, base.flip(0)])
    return x.clamp(-TOP, TOP), y.clamp(-TOP, TOP)


def share_ring(v: torch.Tensor, party: Party, src: int = 0) -> torch.Tensor:
    return share(v if party.rank == src else None, src, party, shape=v.shape, frac_bits=0)


def opened(party: Party, *ts: torch.Tensor) -> list[torch.Tensor]:
    out = open_shares(list(ts), party)
    assert out is not None
    return out


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_ltz_exact_on_the_whole_ring(world_size: int, dealer: str, run_parties: Run) -> None:
    g = torch.Generator().manual_seed(11)
    v = torch.randint(-(1 << 63), (1 << 63) - 1, (2000,), generator=g)
    v = torch.cat([v, edges(), torch.tensor([-(1 << 63), (1 << 63) - 1, -(1 << 63) + 1])])

    def fn(party: Party) -> tuple[torch.Tensor, int, int]:
        x = share_ring(v, party)
        party.comm.stats.reset()
        z = C.ltz(x, party)
        stats = party.comm.stats.total
        rounds, sent = stats.rounds, stats.bytes_sent
        return opened(party, z)[0], rounds, sent

    for z, rounds, sent in run_parties(fn, world_size, dealer=dealer):
        assert torch.equal(z, (v < 0).long())
        if dealer == "tfp":
            n_pad = -(-v.numel() // 64) * 64
            assert rounds == 4
            # per peer: c (8 B), layer 2 (4 B), layer 3 (1 B), injection (1/8 B), padded
            assert sent == (world_size - 1) * (13 * n_pad + n_pad // 8)


def test_private_comparisons_exact(world_size: int, run_parties: Run) -> None:
    x, y = pairs(300, 1)
    ops = {
        "lt": (C.lt, x < y),
        "le": (C.le, x <= y),
        "gt": (C.gt, x > y),
        "ge": (C.ge, x >= y),
        "eq": (C.eq, x == y),
        "ne": (C.ne, x != y),
    }

    def fn(party: Party) -> dict[str, torch.Tensor]:
        sx, sy = share_ring(x, party, 0), share_ring(y, party, party.world_size - 1)
        names = list(ops)
        outs = opened(party, *[ops[k][0](sx, sy, party) for k in names])
        return dict(zip(names, outs, strict=True))

    for res in run_parties(fn, world_size):
        for name, (_, ref) in ops.items():
            assert torch.equal(res[name], ref.long()), name


def test_public_comparisons_exact(world_size: int, run_parties: Run) -> None:
    x, _ = pairs(200, 2)
    xr = x.double() / 2**F  # the exact reals the ring values encode
    thresholds = [0.0, 0.3, -0.3, 1.0, 2, -(2**40) + 0.5, torch.linspace(-3, 3, x.numel())]

    def fn(party: Party) -> list[list[torch.Tensor]]:
        sx = share_ring(x, party)
        res = []
        for t in thresholds:
            fns = [C.lt_public, C.le_public, C.gt_public, C.ge_public, C.eq_public, C.ne_public]
            res.append(opened(party, *[fn_(sx, t, party) for fn_ in fns]))
        return res

    for res in run_parties(fn, world_size):
        for t, got in zip(thresholds, res, strict=True):
            tv = t.double() if isinstance(t, torch.Tensor) else torch.tensor(float(t))
            refs = [xr < tv, xr <= tv, xr > tv, xr >= tv, xr == tv, xr != tv]
            for g, r in zip(got, refs, strict=True):
                assert torch.equal(g, r.long()), t


def test_relu_abs_sign_max_min_where_clamp(world_size: int, run_parties: Run) -> None:
    x, y = pairs(200, 3)
    lo, hi = -0.75, 2.5
    lo_t = torch.linspace(-2, 0, x.numel())

    def fn(party: Party) -> dict[str, Any]:
        sx, sy = share_ring(x, party, 0), share_ring(y, party, 1)
        party.comm.stats.reset()
        r, mask = C.relu(sx, party)
        relu_rounds = party.comm.stats.total.rounds
        a2, neg = C.abs_and_sign(sx, party)
        cond = C.lt(sx, sy, party)
        outs = opened(
            party,
            r,
            mask,
            C.abs_(sx, party),
            a2,
            neg,
            C.sign(sx, party),
            C.maximum(sx, sy, party),
            C.minimum(sx, sy, party),
            C.where(cond, sx, sy, party),
            C.clamp(sx, party, lo, hi),
            C.clamp(sx, party, min=lo_t),
            C.clamp(sx, party, max=hi),
        )
        return {"outs": outs, "relu_rounds": relu_rounds}

    xr = x.double() / 2**F
    lo_ring = round(lo * 2**F)
    hi_ring = round(hi * 2**F)
    lo_t_ring = torch.round(lo_t.double() * 2**F).long()
    refs = [
        x.clamp(min=0),
        (x > 0).long(),
        x.abs(),
        x.abs(),
        (x < 0).long(),
        torch.sign(x),
        torch.maximum(x, y),
        torch.minimum(x, y),
        torch.where(x < y, x, y),
        x.clamp(lo_ring, hi_ring),
        torch.maximum(x, lo_t_ring),
        x.clamp(max=hi_ring),
    ]
    assert xr.numel() == x.numel()
    for res in run_parties(fn, world_size):
        for i, (got, ref) in enumerate(zip(res["outs"], refs, strict=True)):
            assert torch.equal(got, ref), i
        assert res["relu_rounds"] == 4


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(st.integers(-(2**61), 2**61), min_size=1, max_size=40),
    threshold=st.floats(-1e6, 1e6, allow_nan=False),
)
def test_lt_public_property(values: list[int], threshold: float, run_parties: Run) -> None:
    v = torch.tensor(values, dtype=torch.int64)

    def fn(party: Party) -> torch.Tensor:
        return opened(party, C.lt_public(share_ring(v, party), threshold, party))[0]

    got = run_parties(fn, 2)[0]
    exact = [int(Fraction(val, 1 << F) < Fraction(threshold)) for val in values]
    assert got.tolist() == exact
