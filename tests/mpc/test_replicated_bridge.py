"""The replicated family's bridge: non-local ops between parties 0 and 1, party 2 dealing.

Three parties with ``protocol="replicated"`` and no dealer process; plaintext torch is the
oracle. Tolerances: comparisons and ReLU are exact on the encoding (one ulp ``2**-16`` from
rounding the input); approximations keep the documented errors of the 2-party protocols they
run (``protocols/approximations.py``), which the bridge does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import crypten_lite as cl
from crypten_lite import bridge
from crypten_lite.errors import EncodingError
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
ULP = 2.0**-16
GEN = torch.Generator().manual_seed(14)


def run3(run_parties: Run, fn: Callable[[Party], Any]) -> list[Any]:
    return run_parties(fn, 3, protocol="replicated")


def spread(n: int, lo: float = -3.0, hi: float = 4.0) -> torch.Tensor:
    """Magnitudes from 2**-12 to 2**12 with both signs (the whole useful range, not only ~1)."""
    mags = torch.logspace(lo, hi, n, base=10.0).clamp(max=30000.0)
    signs = torch.where(torch.rand(n, generator=GEN) < 0.5, -1.0, 1.0)
    return mags * signs


def q(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the fixed-point grid (what the parties actually share)."""
    return torch.round(x * 2**16) / 2**16


def grid(t: Any) -> Any:
    return t.reshape(20, 15)


# Each op runs on the encrypted operands and on their plaintexts (the oracle) alike.
EXACT: dict[str, Callable[[Any, Any], Any]] = {
    "relu": lambda a, b: F.relu(a),
    "lt": lambda a, b: a < b,
    "ge": lambda a, b: a >= 0.25,
    "maximum": torch.maximum,
    "abs": lambda a, b: a.abs(),
    "max": lambda a, b: grid(a).max(dim=1).values,
    "argmax": lambda a, b: grid(a).argmax(dim=1),
    "pool": lambda a, b: F.max_pool2d(grid(a).reshape(1, 1, 20, 15), 2),
}


def test_comparisons_relu_max_exact(run_parties: Run) -> None:
    x = spread(300)
    y = spread(300).flip(0)
    x[:5] = y[:5]  # ties

    def fn(party: Party) -> dict[str, torch.Tensor]:
        with cl.use_party(party):
            a, b = cl.cryptensor(x), cl.cryptensor(y, src=1)
            return {k: op(a, b).get_plain_text() for k, op in EXACT.items()}

    ref = {k: op(q(x), q(y)) for k, op in EXACT.items()}
    for got in run3(run_parties, fn):
        for k, r in ref.items():
            assert torch.equal(got[k].to(r.dtype), r), k


APPROX: dict[str, Callable[[Any, Any, Any], Any]] = {
    "exp": lambda a, p, r: torch.exp(a.clamp(max=6.0)),
    "sigmoid": lambda a, p, r: torch.sigmoid(a),
    "gelu": lambda a, p, r: F.gelu(a),
    "reciprocal": lambda a, p, r: torch.reciprocal(p),
    "softmax": lambda a, p, r: F.softmax(r, dim=-1),
    "layer_norm": lambda a, p, r: F.layer_norm(r, (40,)),
}
# (relative, absolute) bounds: the 2-party protocols' documented errors at f = 16
APPROX_TOL = {
    "exp": (1e-3, 1e-3),
    "sigmoid": (0, 2e-3),
    "gelu": (0, 5e-3),
    "reciprocal": (2e-3, 4e-4),
    "softmax": (0, 2e-3),
    "layer_norm": (0, 1e-2),
}


def test_approximations_within_their_errors(run_parties: Run) -> None:
    x = torch.linspace(-8.0, 8.0, 257)
    pos = torch.logspace(-2, 3, 200)
    rows = torch.randn(16, 40, generator=GEN) * 4

    def fn(party: Party) -> dict[str, torch.Tensor]:
        with cl.use_party(party):
            enc = cl.cryptensor(x), cl.cryptensor(pos), cl.cryptensor(rows)
            return {k: op(*enc).get_plain_text() for k, op in APPROX.items()}

    ref = {k: op(x, pos, rows) for k, op in APPROX.items()}
    for got in run3(run_parties, fn):
        for k, r in ref.items():
            rel, abs_ = APPROX_TOL[k]
            err = (got[k] - r).abs()
            assert bool((err <= abs_ + rel * r.abs()).all()), (k, float(err.max()))


def test_module_forward_backward_and_inplace(run_parties: Run) -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 6, generator=GEN)
    target = torch.randn(5, 3, generator=GEN)

    def fn(party: Party) -> dict[str, torch.Tensor]:
        with cl.use_party(party):
            import copy

            m = copy.deepcopy(model)
            cl.encrypt_module(m)
            xe = cl.cryptensor(x, requires_grad=True)
            loss = F.mse_loss(m(xe), target)
            loss.backward()
            y = cl.cryptensor(x)
            y.relu_()  # in place: the 2-party result is written back into the 3-party tensor
            return {
                "loss": loss.get_plain_text(),
                "grad:x": xe.grad.get_plain_text(),
                "grad:w0": m[0].weight.grad.get_plain_text(),
                "relu_": y.get_plain_text(),
            }

    xr = x.clone().requires_grad_()
    loss = F.mse_loss(model(xr), target)
    loss.backward()
    assert model[0].weight.grad is not None and xr.grad is not None
    for got in run3(run_parties, fn):
        assert abs(float(got["loss"]) - float(loss.detach())) < 1e-3
        assert torch.allclose(got["grad:x"], xr.grad, atol=2e-3)
        assert torch.allclose(got["grad:w0"], model[0].weight.grad, atol=2e-3)
        assert torch.equal(got["relu_"], F.relu(q(x)))


def test_party_2_receives_no_share_and_resharing_costs_8_bytes(run_parties: Run) -> None:
    n = 1000
    x = spread(n)

    def fn(party: Party) -> dict[str, Any]:
        with cl.use_party(party):
            fresh = cl.cryptensor(x)  # input sharing records the replicated companions
            a = fresh + 1.0  # a new share: no companion recorded for it
            party.comm.stats.reset()
            F.relu(fresh)  # party 1 holds x_2 already: no resharing message
            free = party.comm.stats.snapshot()
            party.comm.stats.reset()
            r = F.relu(a)
            first = party.comm.stats.snapshot()
            party.comm.stats.reset()
            F.relu(r)  # r is already on parties 0 and 1: no resharing
            second = party.comm.stats.snapshot()
            return {
                "reshare_free": free.by_tag.get("bridge.reshare"),
                "reshare_first": first.by_tag.get("bridge.reshare"),
                "reshare_second": second.by_tag.get("bridge.reshare"),
                "received_tags": sorted(first.by_tag),
                "received": {t: s.bytes_received for t, s in first.by_tag.items()},
            }

    res = run3(run_parties, fn)
    assert res[2]["reshare_first"].bytes_sent == 8 * n
    assert res[1]["reshare_first"].bytes_received == 8 * n
    assert res[0]["reshare_first"] is None  # party 0 only draws the mask
    assert all(r["reshare_second"] is None and r["reshare_free"] is None for r in res)
    # Party 2 receives dealer requests (JSON: kinds and shapes) and nothing else.
    assert {t for t, b in res[2]["received"].items() if b} == {"dealer.request"}


def test_errors_raise_on_every_party(run_parties: Run) -> None:
    x = spread(10)

    def fn(party: Party) -> str:
        with cl.use_party(party):
            a = cl.cryptensor(x)
            try:
                torch.exp(a * 1e30)  # the public factor does not fit the encoding
            except EncodingError as exc:
                err = type(exc).__name__
            b = F.relu(a)  # and the session goes on in step
            assert b.get_plain_text() is not None
            return err

    assert run3(run_parties, fn) == ["EncodingError"] * 3


def test_binary_and_conversions(run_parties: Run) -> None:
    x = spread(64)
    y = spread(64).flip(0)

    def fn(party: Party) -> dict[str, torch.Tensor]:
        with cl.use_party(party):
            a, b = cl.cryptensor(x).to_binary(), cl.cryptensor(y, src=1).to_binary()
            both = a & b
            return {
                "and": both.get_plain_text(),
                "or": (a | b).get_plain_text(),
                "b2a": both.to_arithmetic().get_plain_text(),
            }

    wx, wy = torch.round(x.double() * 2**16).long(), torch.round(y.double() * 2**16).long()
    ref = {"and": wx & wy, "or": wx | wy, "b2a": wx & wy}
    for got in run3(run_parties, fn):
        for k, words in ref.items():  # float32 results: exact up to float32 rounding
            assert torch.allclose(got[k].double(), words.double() / 2**16, rtol=1e-7, atol=ULP), k


def test_companion_hook_skips_the_resharing_message(run_parties: Run) -> None:
    """Where party 1 holds party 2's share (the replicated companion), resharing is free."""
    x = spread(50)
    held: dict[tuple[int, int], torch.Tensor] = {}

    def companion(t: Any) -> torch.Tensor | None:
        return held.get((t.party.rank, id(t)))

    def fn(party: Party) -> tuple[torch.Tensor, Any]:
        with cl.use_party(party):
            a = cl.cryptensor(x)
            # stand-in for the replicated sharing: party 1 learns x_2 (test only)
            if party.rank == 2:
                party.comm.send(1, a.share, "test.companion")
            held[(party.rank, id(a))] = (
                party.comm.recv(2, "test.companion") if party.rank == 1 else torch.empty(0)
            )
            party.comm.stats.reset()
            r = F.relu(a)
            return r.get_plain_text(), party.comm.stats.by_tag.get("bridge.reshare")

    bridge.register_companion(companion)
    try:
        res = run3(run_parties, fn)
    finally:
        bridge._COMPANION.clear()
    for got, reshare in res:
        assert torch.equal(got, F.relu(q(x)))
        assert reshare is None


def test_in_place_writes_make_companions_stale(run_parties: Run) -> None:
    """An in-place write (native or bridged) changes the share under a recorded companion: the
    next product must not use the old companion (a silently wrong result), but fetch it."""
    x = torch.linspace(-3.0, 3.0, 12)
    y = torch.linspace(0.5, 2.0, 12)

    def fn(party: Party) -> list[torch.Tensor]:
        with cl.use_party(party):
            a, b = cl.cryptensor(x), cl.cryptensor(y, src=1)
            a.add_(1.0)  # native in-place write
            first = (a * b).get_plain_text()
            c = cl.cryptensor(x)
            c.relu_()  # bridged in-place write
            second = (c * b).get_plain_text()
            return [first, second]

    for first, second in run3(run_parties, fn):
        assert torch.allclose(first, (q(x) + 1) * q(y), atol=1e-3)
        assert torch.allclose(second, F.relu(q(x)) * q(y), atol=1e-3)
