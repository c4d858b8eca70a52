"""Truncation: the dealer method is floor or floor + 1 for every |x| < 2**62 and any N; the local
method (2 parties) is the same except with probability |x| / 2**64, as its docstring states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from crypten_lite.errors import ConfigurationError
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.protocols.truncation import (
    resolve_method,
    truncate,
    truncate_dealer,
    truncate_local,
)
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
LIMIT = 1 << 62


def values(n: int, bits: int, seed: int) -> torch.Tensor:
    """Signed ring values below 2**bits, with the edges of the range and of the shift."""
    g = torch.Generator().manual_seed(seed)
    hi = (1 << bits) - 1
    edges = torch.tensor([0, 1, -1, hi, -hi, 1 << 16, -(1 << 16), -(1 << 16) + 1, (1 << 16) - 1])
    mags = torch.randint(0, bits, (n,), generator=g)
    raw = torch.randint(-(1 << 62), (1 << 62) - 1, (n,), generator=g) >> (62 - mags).clamp(min=0)
    return torch.cat([edges, raw.clamp(-hi, hi)])


def share_ring(x: torch.Tensor, party: Party) -> torch.Tensor:
    return share(x if party.rank == 0 else None, 0, party, shape=x.shape, frac_bits=0)


def opened(t: torch.Tensor, party: Party) -> torch.Tensor:
    out = open_shares([t], party)
    assert out is not None
    return out[0]


def assert_floor_or_next(got: torch.Tensor, x: torch.Tensor, k: int) -> None:
    floor = x >> k
    ok = (got == floor) | (got == floor + 1)
    assert bool(ok.all()), (x[~ok][:5], got[~ok][:5], floor[~ok][:5])


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_dealer_truncation_is_floor_or_next_on_the_whole_range(
    n: int, dealer: str, run_parties: Run
) -> None:
    x = values(3000, 62, seed=n)
    ks = [1, 16, 30, 62]

    def fn(party: Party) -> list[torch.Tensor]:
        xs = share_ring(x, party)
        return [opened(truncate(xs, party, k, method="dealer"), party) for k in ks]

    res = run_parties(fn, n, dealer=dealer)
    for k, got in zip(ks, res[0], strict=True):
        assert_floor_or_next(got, x, k)


def test_dealer_truncation_rounds_and_bytes(world_size: int, run_parties: Run) -> None:
    def fn(party: Party) -> tuple[int, int]:
        xs = share_ring(values(100, 40, 0), party)
        party.comm.stats.reset()
        truncate_dealer(xs, party, 16)
        s = party.comm.stats.by_tag["trunc"]
        return s.rounds, s.bytes_sent

    for r in run_parties(fn, world_size):
        assert r == (1, 8 * 109 * (world_size - 1))


def test_local_truncation_small_values_never_fail(run_parties: Run) -> None:
    # |x| < 2**40: failure probability 2**-24 per element; 3000 elements -> < 2e-4.
    x = values(3000, 40, seed=7)

    def fn(party: Party) -> list[torch.Tensor]:
        xs = share_ring(x, party)
        party.comm.stats.reset()
        out = [opened(truncate(xs, party, k, method="local"), party) for k in (1, 16, 33)]
        return out

    for k, got in zip((1, 16, 33), run_parties(fn, 2)[0], strict=True):
        assert_floor_or_next(got, x, k)


def test_local_truncation_failure_rate_matches_the_docstring(run_parties: Run) -> None:
    # |x| = 2**62: failure probability exactly 1/4, and a failure is off by 2**(64-k).
    k, n = 16, 4000
    x = torch.full((n,), 1 << 62, dtype=torch.int64)
    x[: n // 2] = -(1 << 62)

    def fn(party: Party) -> torch.Tensor:
        return opened(truncate_local(share_ring(x, party), party, k), party)

    got = run_parties(fn, 2)[0]
    floor = x >> k
    good = (got == floor) | (got == floor + 1)
    off = got - floor
    wrapped = (off == -(1 << (64 - k))) | (off == -(1 << (64 - k)) + 1)
    wrapped |= (off == (1 << (64 - k))) | (off == (1 << (64 - k)) + 1)
    assert bool((good | wrapped).all())
    assert 800 < int((~good).sum()) < 1200


def test_local_needs_two_parties_and_auto_picks(run_parties: Run) -> None:
    """``auto`` is the exact dealer method for every N (2-party local truncation fails at model
    scale, see protocols/truncation.py); ``local`` works only when asked for, with 2 parties."""

    def fn(party: Party) -> tuple[str, str]:
        auto = resolve_method(party, "auto")
        try:
            truncate(party.przs((2,)), party, method="local")
        except ConfigurationError as exc:
            return auto, str(exc)
        return auto, ""

    two, three = run_parties(fn, 2)[0], run_parties(fn, 3)[0]
    assert two == ("dealer", "")
    assert three[0] == "dealer" and "2 parties" in three[1] and "party 0" in three[1]


def test_bad_arguments(run_parties: Run) -> None:
    def fn(party: Party) -> list[str]:
        msgs = []
        for attempt in (
            lambda: truncate(torch.zeros(2), party),
            lambda: truncate(party.przs((2,)), party, 63, method="dealer"),
            lambda: truncate(party.przs((2,)), party, -1),
            lambda: truncate(party.przs((2,)), party, method="exact"),
        ):
            try:
                attempt()
            except (TypeError, ValueError) as exc:
                msgs.append(str(exc))
        zero = truncate(party.przs((2,)), party, 0, method="dealer")
        assert zero.shape == (2,)
        return msgs

    msgs = run_parties(fn, 2)[1]
    assert len(msgs) == 4 and all("party 1" in m for m in msgs)
