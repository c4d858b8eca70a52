"""Sharing and opening: reconstruct(share(x)) == x, linearity mod 2**64, reveal to one party."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crypten_lite.config import Config
from crypten_lite.protocols.opening import open_shares, open_xor_shares
from crypten_lite.protocols.sharing import reveal, share, share_public
from crypten_lite.runtime.party import Party, run_threads

Run = Callable[..., list[Any]]
I64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(I64, min_size=1, max_size=12),
    st.lists(I64, min_size=1, max_size=12),
    st.integers(-(1 << 20), 1 << 20),
    st.sampled_from([2, 3]),
)
def test_reconstruct_and_linearity_mod_2_64(xs: list[int], ys: list[int], c: int, n: int) -> None:
    size = min(len(xs), len(ys))
    x, y = torch.tensor(xs[:size]), torch.tensor(ys[:size])

    def fn(party: Party) -> tuple[torch.Tensor, ...]:
        sx = share(x if party.rank == 0 else None, 0, party, frac_bits=0)  # shape broadcast
        sy = share(y if party.rank == n - 1 else None, n - 1, party, shape=(size,), frac_bits=0)
        opened = open_shares([sx, sx + sy, sx * c, sx - sy], party)
        assert opened is not None
        return (sx, *opened)

    res = run_threads(fn, n, config=Config(transport="inproc", dealer="tfp", timeout_s=20))
    shares, rx, rsum, rscaled, rdiff = (
        [r[0] for r in res],
        res[0][1],
        res[0][2],
        res[0][3],
        res[0][4],
    )
    assert torch.equal(rx, x)
    assert torch.equal(rsum, x + y) and torch.equal(rdiff, x - y)
    assert torch.equal(rscaled, x * c)
    assert torch.equal(sum(shares), x)
    if size > 2:  # a single share is not the value (holds except with negligible probability)
        assert all(not torch.equal(s, x) for s in shares)


def test_reveal_real_values_to_all_and_to_one(world_size: int, run_parties: Run) -> None:
    x = torch.tensor([[-1.99998, 0.5], [3.25, -1e6]], dtype=torch.float64)

    def fn(party: Party) -> tuple[Any, ...]:
        s = share(x if party.rank == 1 else None, 1, party)
        pub = share_public(torch.tensor([5, 6]), party)
        return (
            reveal(s, party, dtype=torch.float64),
            reveal(s, party, dst=world_size - 1, dtype=torch.float64),
            open_shares([pub], party)[0],  # type: ignore[index]
            open_xor_shares([torch.full((2,), 1 << party.rank)], party)[0],  # type: ignore[index]
        )

    res = run_parties(fn, world_size)
    for rank, (everyone, one, pub, xor) in enumerate(res):
        assert (everyone - x).abs().max() <= 2**-17
        assert (one is None) == (rank != world_size - 1)
        assert pub.tolist() == [5, 6]
        assert xor.tolist() == [2**world_size - 1] * 2


def test_bad_src_dst_and_dtype_name_the_party(run_parties: Run) -> None:
    def fn(party: Party) -> list[str]:
        msgs = []
        for attempt in (
            lambda: share(torch.ones(2), 5, party),
            lambda: share(None, party.rank, party, shape=(2,)),
            lambda: open_shares([party.przs((2,))], party, dst=9),
            lambda: open_shares([torch.ones(2)], party),
        ):
            try:
                attempt()
            except (TypeError, ValueError) as exc:
                msgs.append(str(exc))
        return msgs

    for rank, msgs in enumerate(run_parties(fn, 2)):
        assert len(msgs) == 4 and all(f"party {rank}" in m for m in msgs)


def test_opening_checks_what_peers_send(run_parties: Run) -> None:
    from crypten_lite.errors import ProtocolError

    def fn(party: Party) -> None:
        n = 3 if party.rank == 0 else 2  # party 0 sends a share of another shape
        open_shares([party.przs((n,))], party)

    with pytest.raises(ProtocolError, match="shape"):
        run_parties(fn, 2)


def test_unencodable_input_fails_on_every_party(run_parties, world_size) -> None:
    """A value outside the ring fails on the source *and* on the parties waiting for it."""
    import torch as _torch

    from crypten_lite.errors import EncodingError as _EncodingError
    from crypten_lite.protocols.sharing import share as _share

    def fn(party):
        try:
            _share(_torch.tensor([1e30]) if party.rank == 0 else None, 0, party)
        except _EncodingError as exc:
            return str(exc)
        return "no error"

    messages = run_parties(fn, world_size)
    assert "out of the fixed-point range" in messages[0]
    assert all("party 0 could not encode its input" in m for m in messages[1:])
