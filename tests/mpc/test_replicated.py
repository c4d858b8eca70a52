"""The replicated family (3 parties, no dealer): sharing, opening, products, truncation, costs.

Plain torch is the oracle. Tolerances in ulps (u = 2**-16) as in test_arithmetic.py: encoding
costs 1/2 ulp per input, truncation below 1 ulp, so a product x*y is within (|x| + |y|)/2 + 1
ulps and a k-term sum of products within sum_k (|x_k| + |y_k|)/2 + 1. Inputs span [-scale,
scale] with scales from 1e-3 to 1e3, not only near 1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import crypten_lite as cl
from crypten_lite.config import Config
from crypten_lite.errors import ConfigurationError, ProtocolError
from crypten_lite.protocols import arithmetic as A
from crypten_lite.protocols import replicated
from crypten_lite.protocols.beaver import beaver, prepare_fixed
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import reveal, share
from crypten_lite.protocols.truncation import truncate
from crypten_lite.runtime.comm import InProcessHub
from crypten_lite.runtime.party import Party, run_threads

Run = Callable[..., list[Any]]
U = 2.0**-16
SLACK = 1e-9
REP = {"protocol": "replicated"}


def gen(shape: tuple[int, ...], seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale


def sh(x: torch.Tensor, src: int, party: Party) -> torch.Tensor:
    return share(x if party.rank == src else None, src, party, shape=x.shape)


def rv(t: torch.Tensor, party: Party) -> torch.Tensor:
    out = reveal(t, party, dtype=torch.float64)
    assert out is not None
    return out


def check(got: torch.Tensor, ref: torch.Tensor, ulps: torch.Tensor | float, what: str) -> None:
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err = (got - ref).abs()
    bound = torch.as_tensor(ulps, dtype=torch.float64) * U + SLACK
    assert bool((err <= bound).all()), f"{what}: max err {float(err.max() / U):.2f} ulps"


def product_bound(op: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Any:
    """(|x| + |y|)/2 per product term, summed by ``op`` itself over |x| and 1, 1 and |y|."""
    ones_x, ones_y = torch.ones_like(x), torch.ones_like(y)
    return (op(x.abs(), ones_y) + op(ones_x, y.abs())) / 2 + 1


# --------------------------------------------------------------------------- set-up
def _setup_all(families: list[str], *, has_dealer: bool = False) -> list[BaseException | None]:
    """Run ``Party.setup`` on three threads with each party's family; each party's error."""
    hub = InProcessHub(3, has_dealer=has_dealer)
    errors: list[BaseException | None] = [None] * 3

    def main(rank: int) -> None:
        config = Config(transport="inproc", dealer="tfp", timeout_s=10.0, protocol=families[rank])
        try:
            Party.setup(hub.communicator(rank, timeout_s=10.0), config)
        except BaseException as exc:  # noqa: BLE001 - checked by the caller
            errors[rank] = exc

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def test_setup_without_dealer_and_refusals(run_parties: Run) -> None:
    def fn(party: Party) -> tuple[bool, str]:
        return party.replicated, type(party.dealer).__name__

    assert run_parties(fn, 3, **REP) == [(True, "NoDealer")] * 3
    with pytest.raises(ConfigurationError, match="exactly 3 parties"):
        run_parties(fn, 2, **REP)
    for exc in _setup_all(["replicated"] * 3, has_dealer=True):
        assert isinstance(exc, ConfigurationError) and "no dealer process" in str(exc)


def test_mixing_families_is_refused_on_every_party() -> None:
    for exc in _setup_all(["replicated", "beaver", "replicated"]):
        assert isinstance(exc, ProtocolError) and "protocol family" in str(exc)


def test_dealer_material_is_refused_clearly(run_parties: Run) -> None:
    def fn(party: Party) -> None:
        party.dealer.binary_triple((4,))

    with pytest.raises(ProtocolError, match="no dealer"):
        run_parties(fn, 3, **REP)


# --------------------------------------------------------------------------- sharing, opening
@pytest.mark.parametrize("src", [0, 1, 2])
def test_sharing_gives_companions_and_opens_at_one_message(src: int, run_parties: Run) -> None:
    x = gen((5, 7), src, 1e3)

    def fn(party: Party) -> tuple[Any, ...]:
        s = share(x if party.rank == src else None, src, party)  # shape broadcast too
        companion = party.companion(s)
        stats = party.comm.stats
        stats.reset()
        everyone = rv(s, party)
        to_all = stats.by_tag["reveal"].bytes_sent
        stats.reset()
        only = reveal(s, party, dst=(src + 1) % 3, dtype=torch.float64)
        to_one = stats.by_tag["reveal"].bytes_sent if "reveal" in stats.by_tag else 0
        return companion, s, everyone, to_all, only, to_one

    res = run_parties(fn, 3, **REP)
    for rank, (companion, _, everyone, to_all, only, to_one) in enumerate(res):
        # party i's companion is party i+1's share
        assert torch.equal(companion, res[(rank + 1) % 3][1])
        check(everyone, x, 0.5, "open to all")
        assert to_all == 8 * x.numel()  # one message, to the one party lacking this share
        if rank == (src + 1) % 3:
            check(only, x, 0.5, "open to one")
        else:
            assert only is None
        assert to_one == (8 * x.numel() if rank == (src + 3) % 3 else 0)


def test_missing_companion_is_fetched_re_randomised(run_parties: Run) -> None:
    x = gen((6,), 3, 50.0)

    def fn(party: Party) -> tuple[Any, ...]:
        s = sh(x, 0, party)
        bare = s + 0  # a new tensor: no companion recorded for it
        assert party.companion(bare) is None
        ((fresh, comp),) = replicated.with_companions([bare], party)
        s.add_(0)  # an in-place write makes the recorded companion stale
        assert party.companion(s) is None
        return fresh, comp, rv(fresh, party)

    res = run_parties(fn, 3, **REP)
    for rank, (_fresh, comp, opened) in enumerate(res):
        assert torch.equal(comp, res[(rank + 1) % 3][0])
        check(opened, x, 0.5, "fetched companions")


# --------------------------------------------------------------------------- products
X, Y = gen((4, 6), 1, 30.0), gen((4, 6), 2, 1e-3)
M1, M2 = gen((5, 16), 3), gen((16, 3), 4, 20.0)
B1 = gen((2, 5, 16), 5)
IMG, KER = gen((2, 4, 9, 9), 8), gen((6, 2, 3, 3), 9, 0.5)
SIG, KER1 = gen((2, 3, 11), 10, 100.0), gen((4, 3, 3), 11, 0.5)


def _cases() -> list[tuple[str, Callable[[Party], Any], Callable[[], Any]]]:
    def bil(op: str, a: torch.Tensor, b: torch.Tensor, **params: Any) -> Callable[[Party], Any]:
        return lambda p: A.product(op, sh(a, 0, p), sh(b, 1, p), p, params or None, shift=16)

    return [
        ("mul", bil("mul", X, Y), lambda: (X * Y, product_bound(torch.mul, X, Y))),
        (
            "mul_bcast",
            bil("mul", X, Y[:1]),
            lambda: (X * Y[:1], product_bound(torch.mul, X, Y[:1])),
        ),
        ("matmul", bil("matmul", M1, M2), lambda: (M1 @ M2, product_bound(torch.matmul, M1, M2))),
        ("bmm", bil("matmul", B1, M2), lambda: (B1 @ M2, product_bound(torch.matmul, B1, M2))),
        (
            "conv2d",
            bil("conv2d", IMG, KER, stride=2, padding=1, groups=2),
            lambda: (
                F.conv2d(IMG, KER, stride=2, padding=1, groups=2),
                product_bound(lambda a, b: F.conv2d(a, b, stride=2, padding=1, groups=2), IMG, KER),
            ),
        ),
        (
            "conv1d",
            bil("conv1d", SIG, KER1, padding=1),
            lambda: (
                F.conv1d(SIG, KER1, padding=1),
                product_bound(lambda a, b: F.conv1d(a, b, padding=1), SIG, KER1),
            ),
        ),
        (
            "conv_transpose2d",
            bil("conv_transpose2d", IMG[:, :2], KER[:2], stride=2),
            lambda: (
                F.conv_transpose2d(IMG[:, :2], KER[:2], stride=2),
                product_bound(lambda a, b: F.conv_transpose2d(a, b, stride=2), IMG[:, :2], KER[:2]),
            ),
        ),
        (
            "einsum",
            bil("einsum", B1, B1, equation="bij,bkj->bik"),
            lambda: (
                torch.einsum("bij,bkj->bik", B1, B1),
                product_bound(lambda a, b: torch.einsum("bij,bkj->bik", a, b), B1, B1),
            ),
        ),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_fixed_point_products_against_torch(case: Any, run_parties: Run) -> None:
    name, body, oracle = case
    ref, bound = oracle()
    for got in run_parties(lambda p: rv(body(p), p), 3, **REP):
        check(got, ref, bound, name)


def test_product_costs_one_round_of_8_bytes_per_element(run_parties: Run) -> None:
    x, y = gen((40, 25), 12, 10.0), gen((40, 25), 13, 10.0)
    w = gen((25, 8), 14)

    def fn(party: Party) -> tuple[Any, ...]:
        xs, ys, ws = sh(x, 0, party), sh(y, 1, party), sh(w, 2, party)
        stats = party.comm.stats
        stats.reset()
        z = beaver("mul", xs, ys, party)
        mul_cost = (stats.total.rounds, stats.total.bytes_sent)
        stats.reset()
        m = beaver("matmul", xs, ws, party)
        mm_cost = (stats.total.rounds, stats.total.bytes_sent)
        has_companion = party.companion(z) is not None and party.companion(m) is not None
        z_pub = reveal(z, party, frac_bits=32, dtype=torch.float64)
        return mul_cost, mm_cost, has_companion, z_pub

    for mul_cost, mm_cost, has_companion, z_pub in run_parties(fn, 3, **REP):
        assert mul_cost == (1, 8 * x.numel())
        assert mm_cost == (1, 8 * 40 * 8)  # the resharing floor: one output-sized message
        assert has_companion
        check(z_pub, x * y, product_bound(torch.mul, x, y), "integer-scale product")


def test_fixed_operand_reuses_its_companion(run_parties: Run) -> None:
    w = gen((6, 3), 15)
    batches = [gen((b, 6), 16 + b) for b in (1, 4)]

    def fn(party: Party) -> list[Any]:
        wf = prepare_fixed(sh(w, 2, party) + sh(w, 2, party), party)  # no companion yet
        out = []
        for x in batches:
            xs = sh(x, 0, party)
            party.comm.stats.reset()
            z = A.product("matmul", xs, wf, party, shift=16)
            out.append((party.comm.stats.total.rounds, rv(z, party)))
        return out

    for res in run_parties(fn, 3, **REP):
        for x, (rounds, got) in zip(batches, res, strict=True):
            assert rounds == 1  # the truncation's opening; no companion fetch
            check(got, x @ (2 * w), product_bound(torch.matmul, x, 2 * w), "fixed operand")


# --------------------------------------------------------------------------- truncation
def test_truncation_is_exact_over_the_whole_domain(run_parties: Run) -> None:
    limit = 2**62 - 1
    edges = torch.tensor([0, 1, -1, 2**16 - 1, -(2**16), limit, -limit, 2**40 + 3, -(2**50) - 7])
    g = torch.Generator().manual_seed(17)
    wide = torch.randint(-limit, limit, (500,), generator=g, dtype=torch.int64)
    values = torch.cat([edges, wide])

    def fn(party: Party) -> list[torch.Tensor]:
        xs = share(values if party.rank == 1 else None, 1, party, shape=values.shape, frac_bits=0)
        out = []
        for k in (1, 16, 32, 62):
            t = truncate(xs, party, k)
            opened = open_shares([t], party)
            assert opened is not None
            out.append(opened[0])
        return out

    for res in run_parties(fn, 3, **REP):
        for k, got in zip((1, 16, 32, 62), res, strict=True):
            floor = values >> k
            assert bool(((got == floor) | (got == floor + 1)).all()), k


def test_truncation_cost(run_parties: Run) -> None:
    z = gen((100,), 18, 1e3)

    def fn(party: Party) -> tuple[int, int]:
        zs = sh(z, 0, party)
        party.comm.stats.reset()
        truncate(zs, party, 16)
        return party.comm.stats.total.rounds, party.comm.stats.total.bytes_sent

    costs = run_parties(fn, 3, **REP)
    assert costs == [(1, 800), (1, 800), (1, 2400)]


# --------------------------------------------------------------------------- tensors
def test_encrypted_tensors_keep_companions_through_views(run_parties: Run) -> None:
    a, b, w = gen((4, 6), 19, 10.0), gen((6, 4), 20, 10.0), gen((6, 5), 21)

    def body(party: Party) -> tuple[Any, ...]:
        with cl.use_party(party):
            xa, xb, xw = (
                cl.cryptensor(a.float()),
                cl.cryptensor(b.float()),
                cl.cryptensor(w.float()),
            )
            stats = party.comm.stats
            stats.reset()
            prod = xa * xb.t()  # the transpose moves xb's companion: no fetch round
            fetched = any(tag.endswith(".companion") for tag in stats.by_tag)
            mm = (prod[1:] @ xw).get_plain_text()  # prod's companion is fetched here
            return fetched, prod.get_plain_text(), mm

    for fetched, prod, mm in run_parties(body, 3, **REP):
        assert not fetched
        ref = (a * b.t()).float()
        check(prod.double(), ref.double(), product_bound(torch.mul, a, b.t()) + 1, "mul")
        torch.testing.assert_close(mm, (ref[1:] @ w.float()), atol=2e-3, rtol=1e-4)


def test_threads_helper_refuses_without_three_parties() -> None:
    config = Config(transport="inproc", dealer="tfp", timeout_s=5.0, protocol="replicated")
    with pytest.raises(ConfigurationError):
        run_threads(lambda p: None, 4, config=config)


def test_share_wise_moves_companions_only_where_layouts_allow(run_parties: Run) -> None:
    from crypten_lite.ops._common import share_wise
    from crypten_lite.tensor import MPCTensor

    aten = torch.ops.aten

    def fn(party: Party) -> tuple[bool, bool, bool]:
        share = torch.arange(12, dtype=torch.int64).view(3, 4)
        shifted = torch.arange(20, dtype=torch.int64)[8:].view(3, 4)  # storage offset 8
        party.set_companion(share, shifted)
        x = MPCTensor(share, party)
        moved = share_wise(aten.t.default, x)
        strided = share_wise(aten.as_strided.default, x, [2, 2], [4, 1], 1)
        ok = torch.equal(party.companion(moved._share), shifted.t())  # type: ignore[arg-type]
        return ok, party.companion(strided._share) is None, party.companion(share) is not None

    assert run_parties(fn, 3, **REP) == [(True, True, True)] * 3


def test_pair_form_is_free_with_companions(run_parties: Run) -> None:
    x = gen((3, 5), 22, 100.0)

    def fn(party: Party) -> tuple[Any, ...]:
        s = sh(x, 1, party)
        party.comm.stats.reset()
        pair = replicated.pair_form(s, party)
        assert pair is not None and party.comm.stats.total.messages_sent == 0
        assert replicated.pair_form(s + 0, party) is None  # no companion: the caller converts
        return pair, rv(pair, party)

    res = run_parties(fn, 3, **REP)
    assert bool((res[2][0] == 0).all())
    for _, opened in res:
        check(opened, x, 0.5, "pair form")


def test_square_is_a_replicated_product(run_parties: Run) -> None:
    """``x * x`` of one tensor (``arithmetic.square``) takes the replicated product: no square
    pair exists without a dealer."""
    x0 = gen((5, 7), 31, 40.0)

    def fn(party: Party) -> torch.Tensor:
        return rv(A.square(sh(x0, 1, party), party, shift=party.frac_bits), party)

    got = run_parties(fn, 3, protocol="replicated")[0]
    check(got, x0 * x0, x0.abs() + 1, "square")
