"""Beaver products: exact in the ring for every bilinear op, any N, both dealers; fixed operands;
cost at the floor; clear errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from crypten_lite.protocols.beaver import FixedOperand, beaver, prepare_fixed
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import bilinear

Run = Callable[..., list[Any]]

CASES = [
    ("mul", (6,), (6,), None),
    ("mul", (3, 1), (1, 4), None),  # broadcasting: an outer product
    ("mul", (2, 3), (), None),
    ("matmul", (4, 5), (5, 3), None),
    ("matmul", (2, 4, 5), (5, 3), None),  # batched, broadcasting
    ("matmul", (5,), (5,), None),  # dot product
    ("conv1d", (2, 3, 9), (4, 3, 3), {"stride": 2, "padding": 1}),
    ("conv2d", (1, 1, 8, 8), (3, 1, 3, 3), None),
    ("conv2d", (2, 4, 7, 7), (6, 2, 3, 3), {"groups": 2, "padding": [1, 0], "dilation": 2}),
    ("conv_transpose1d", (1, 3, 5), (3, 2, 3), {"stride": 2, "output_padding": 1}),
    ("conv_transpose2d", (1, 2, 4, 4), (2, 3, 3, 3), {"stride": 2, "padding": 1}),
    ("einsum", (2, 3, 4), (2, 4, 5), {"equation": "bij,bjk->bik"}),
]


def ring(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Uniform ring elements (the whole int64 range)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << 63), (1 << 63) - 1, shape, generator=g, dtype=torch.int64)


def share_ring(x: torch.Tensor, src: int, party: Party) -> torch.Tensor:
    return share(x if party.rank == src else None, src, party, shape=x.shape, frac_bits=0)


def opened(t: torch.Tensor, party: Party) -> torch.Tensor:
    out = open_shares([t], party)
    assert out is not None
    return out[0]


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_every_op_is_exact_mod_2_64(world_size: int, dealer: str, run_parties: Run) -> None:
    inputs = [(ring(a, 2 * i), ring(b, 2 * i + 1)) for i, (_, a, b, _) in enumerate(CASES)]

    def fn(party: Party) -> list[torch.Tensor]:
        out = []
        for (op, _, _, params), (x, y) in zip(CASES, inputs, strict=True):
            xs, ys = share_ring(x, 0, party), share_ring(y, party.world_size - 1, party)
            out.append(opened(beaver(op, xs, ys, party, op_params=params), party))
        return out

    res = run_parties(fn, world_size, dealer=dealer)
    for (op, _, _, params), (x, y), got in zip(CASES, inputs, res[0], strict=True):
        assert torch.equal(got, bilinear(op, x, y, params)), op
    for other in res[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, res[0], strict=True))


def test_four_parties(run_parties: Run) -> None:
    x, y = ring((3, 4), 1), ring((4, 2), 2)

    def fn(party: Party) -> torch.Tensor:
        return opened(
            beaver("matmul", share_ring(x, 0, party), share_ring(y, 3, party), party), party
        )

    assert torch.equal(run_parties(fn, 4, dealer="ttp")[0], x @ y)


def test_cost_is_one_round_at_the_byte_floor(world_size: int, run_parties: Run) -> None:
    n, k, m = 3, 5, 4

    def fn(party: Party) -> tuple[int, int, int, int]:
        x, y = share_ring(ring((n, k), 0), 0, party), share_ring(ring((k, m), 1), 1, party)
        e, f = share_ring(ring((100,), 2), 0, party), share_ring(ring((100,), 3), 1, party)
        s = party.comm.stats
        s.reset()
        beaver("matmul", x, y, party)
        mm = (s.by_tag["beaver.matmul"].rounds, s.by_tag["beaver.matmul"].bytes_sent)
        beaver("mul", e, f, party, tag="mymul")
        return (*mm, s.by_tag["mymul"].rounds, s.by_tag["mymul"].bytes_sent)

    peers = world_size - 1
    for r in run_parties(fn, world_size):
        assert r == (1, 8 * (n * k + k * m) * peers, 1, 16 * 100 * peers)


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_fixed_operand_reuses_its_mask(world_size: int, dealer: str, run_parties: Run) -> None:
    w = ring((6, 3), 10)
    batches = [ring((b, 6), 11 + b) for b in (1, 4, 2)]
    conv_w, conv_x = ring((2, 1, 3, 3), 20), ring((1, 1, 5, 5), 21)

    def fn(party: Party) -> tuple[list[torch.Tensor], list[int], torch.Tensor, torch.Tensor]:
        wf = prepare_fixed(share_ring(w, 0, party), party)
        assert isinstance(wf, FixedOperand) and wf.shape == w.shape and "handle" in repr(wf)
        outs, sent = [], []
        for x in batches:
            xs = share_ring(x, party.world_size - 1, party)
            party.comm.stats.reset()
            z = beaver("matmul", xs, wf, party, tag="fixed.matmul")
            sent.append(party.comm.stats.by_tag["fixed.matmul"].bytes_sent)
            outs.append(opened(z, party))
        # fixed on the left: W^T-like use, the same mask serves op(b, m)
        left = opened(beaver("matmul", wf, share_ring(ring((3, 2), 30), 0, party), party), party)
        cf = prepare_fixed(share_ring(conv_w, 0, party), party)
        conv = opened(
            beaver("conv2d", share_ring(conv_x, 1, party), cf, party, op_params={"padding": 1}),
            party,
        )
        wf.release(party)
        cf.release(party)
        return outs, sent, left, conv

    res = run_parties(fn, world_size, dealer=dealer)
    outs, sent, left, conv = res[0]
    for x, got in zip(batches, outs, strict=True):
        assert torch.equal(got, x @ w)
    # only the activation's mask is opened: 8 B per element of x per peer
    peers = world_size - 1
    for r in res:
        assert r[1] == [8 * x.numel() * peers for x in batches]
    assert torch.equal(left, w @ ring((3, 2), 30))
    assert torch.equal(conv, bilinear("conv2d", conv_x, conv_w, {"padding": 1}))


def test_bad_inputs_name_the_party(run_parties: Run) -> None:
    def fn(party: Party) -> list[str]:
        msgs = []
        x = torch.zeros(2, 3, dtype=torch.int64)
        attempts = [
            lambda: beaver("matmul", x, torch.zeros(2, 3, dtype=torch.int64), party),
            lambda: beaver("mul", x, torch.zeros(2, 3), party),
            lambda: beaver("mul", [1, 2], x, party),
            lambda: beaver("exp", x, x, party),
            lambda: beaver("mul", x, torch.zeros(4, dtype=torch.int64), party),
        ]
        for attempt in attempts:
            try:
                attempt()
            except (TypeError, ValueError) as exc:
                msgs.append(f"{type(exc).__name__}: {exc}")
        return msgs

    for rank, msgs in enumerate(run_parties(fn, 2)):
        assert len(msgs) == 5
        assert all(f"party {rank}" in m for m in msgs)
        assert msgs[0].startswith("ValueError") and "(2, 3)" in msgs[0]
        assert msgs[1].startswith("TypeError") and "int64" in msgs[1]
        assert "unknown bilinear op" in msgs[3]


def test_two_fixed_operands_are_refused(run_parties: Run) -> None:
    def fn(party: Party) -> None:
        a = prepare_fixed(party.przs((2, 2)), party)
        b = prepare_fixed(party.przs((2, 2)), party)
        beaver("matmul", a, b, party)

    with pytest.raises(ValueError, match="at most one"):
        run_parties(fn, 2)
