"""Fixed-point arithmetic against plain torch, with error bounds derived from f.

Tolerances, in ulps (u = 2**-f): encoding a real costs at most 1/2 ulp (round to nearest), and a
truncation less than 1 ulp. So a product x*y of encoded inputs is off by at most
(|x| + |y|)/2 + 1 ulps (plus a negligible u**2 term); a matmul/conv output that sums k products
by at most sum_k (|x_k| + |y_k|)/2 + 1 ulps (one truncation after the sum); square by |x| + 1;
sums of n encoded values by n/2. Local truncation (2 parties) fails with probability about
|x*y| * 2**(2f - 64) per element: below 2**-28 for the magnitudes here, so never in practice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from crypten_lite.errors import ConfigurationError
from crypten_lite.protocols import arithmetic as A
from crypten_lite.protocols.beaver import prepare_fixed
from crypten_lite.protocols.sharing import reveal, share
from crypten_lite.runtime.encoding import encode
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
FB = 16
U = 2.0**-FB
SLACK = 1e-9


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
    assert bool((err <= bound).all()), f"{what}: max err {float(err.max()):.3g} ulps " + (
        f"{float((err / U).max()):.2f} > bound {float(torch.as_tensor(ulps).max()):.2f}"
    )


X, Y = gen((4, 6), 1), gen((4, 6), 2)
M1, M2 = gen((5, 16), 3), gen((16, 3), 4)
B1 = gen((2, 5, 16), 5)
MASK = torch.tensor([1.0, 0, 1, 1, 0, 1])
V1, V2 = gen((7,), 6), gen((9,), 7)
IMG, KER = gen((2, 4, 9, 9), 8), gen((6, 2, 3, 3), 9, 0.5)
SIG, K1 = gen((2, 3, 11), 10), gen((4, 3, 3), 11, 0.5)
TIN, TK = gen((1, 3, 5, 5), 12), gen((3, 2, 3, 3), 13, 0.5)
CONV = {"stride": 2, "padding": 1, "groups": 2}


def program(party: Party) -> dict[str, torch.Tensor]:
    """Every protocol of the module once, revealed."""
    x, y = sh(X, 0, party), sh(Y, party.world_size - 1, party)
    m1, m2, b1 = sh(M1, 0, party), sh(M2, 1, party), sh(B1, 0, party)
    v1, v2 = sh(V1, 0, party), sh(V2, 1, party)
    img, ker = sh(IMG, 1, party), sh(KER, 0, party)
    sig, k1, tin, tk = sh(SIG, 0, party), sh(K1, 1, party), sh(TIN, 0, party), sh(TK, 1, party)
    fixed = prepare_fixed(m2, party)
    f = party.frac_bits
    mask = share(MASK if party.rank == 1 else None, 1, party, shape=MASK.shape, frac_bits=0)

    def prod(op: str, a: Any, b: Any, **params: Any) -> torch.Tensor:
        return A.product(op, a, b, party, params or None, shift=f)

    def pub(op: str, a: torch.Tensor, b: torch.Tensor, shift: int = f, **kw: Any) -> torch.Tensor:
        params = kw.pop("params", None)
        return A.public_product(op, a, b, party, params, shift=shift, **kw)

    out = {
        # free operations: plain torch on the shares (the module docstring's claim)
        "add": x + y,
        "sub": x - y,
        "neg": -x,
        "sum": x.sum(),
        "sum_dim": x.sum(1, keepdim=True),
        "cumsum": x.cumsum(1),
        "mul_public": pub("mul", x, encode(Y, f)),
        "mul_public_scalar": pub("mul", x, encode(torch.tensor(-0.3), f)),
        "mul_public_int": pub("mul", x, torch.tensor(3), 0),
        "mul_public_int_tensor": pub("mul", x, torch.arange(6), 0),
        "div_public_pow2": A.div_public(x, -4, party),
        "div_public_int": A.div_public(x, 3, party),
        "div_public_float": A.div_public(x, 0.7, party),
        "div_public_tensor": A.div_public(x, torch.arange(1, 7, dtype=torch.float64) * 10, party),
        "mul": prod("mul", x, y),
        "mul_bcast": prod("mul", x, v1[:6].reshape(1, 6)),
        "square": A.square(x, party, shift=f),
        "matmul": prod("matmul", m1, m2),
        "matmul_batched": prod("matmul", b1, m2),
        "matmul_fixed": prod("matmul", m1, fixed),
        "matmul_fixed_again": prod("matmul", b1, fixed),
        "dot": prod("matmul", v1, v1),
        "outer": prod("mul", v1.reshape(-1, 1), v2.reshape(1, -1)),
        "conv1d": prod("conv1d", sig, k1, padding=1),
        "conv2d": prod("conv2d", img, ker, **CONV),
        "conv_transpose1d": prod(
            "conv_transpose1d", sig, sh(gen((3, 2, 3), 14, 0.5), 1, party), stride=2
        ),
        "conv_transpose2d": prod("conv_transpose2d", tin, tk, stride=2, padding=1),
        "einsum": prod("einsum", b1, m2, equation="bij,jk->bik"),
        "matmul_public": pub("matmul", m1, encode(M2, f)),
        "matmul_public_left": pub("matmul", m2, encode(M1, f), public_first=True),
        "conv2d_public": pub("conv2d", img, encode(KER, f), params=CONV),
        "mul_public_bilinear_int": pub("mul", x, torch.full((6,), 2), 0),
        # an integer (scale-0) operand times a fixed-point one needs no truncation at all
        "mul_by_mask": A.product("mul", x, mask, party, shift=0),
    }
    return {k: rv(v, party) for k, v in out.items()}


def expected() -> dict[str, tuple[torch.Tensor, torch.Tensor | float]]:
    ax, ay = X.abs(), Y.abs()
    half = 0.5
    ones = torch.ones_like

    def mm_bound(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return half * (a.abs() @ ones(b) + ones(a) @ b.abs()) + 1

    def conv_bound(fn: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor, **kw: Any):
        return half * (fn(a.abs(), ones(b), **kw) + fn(ones(a), b.abs(), **kw)) + 1

    ct1 = gen((3, 2, 3), 14, 0.5)
    return {
        "add": (X + Y, 1.0),
        "sub": (X - Y, 1.0),
        "neg": (-X, 0.5),
        "mul_public": (X * Y, half * (ax + ay) + 1),
        "mul_public_scalar": (X * -0.3, half * (ax + 0.3) + 1),
        "mul_public_int": (X * 3, 1.5),
        "mul_public_int_tensor": (X * torch.arange(6), 0.5 * torch.arange(6)),
        "div_public_pow2": (X / -4, 1.5),
        "div_public_int": (X / 3, half * ax / 3 + 0.5 / 3 + 1),
        "div_public_float": (X / 0.7, half * ax / 0.7 + 0.5 / 0.7 + 1),
        "div_public_tensor": (X / (torch.arange(1, 7) * 10), half * ax + 1),
        "sum": (X.sum(), 0.5 * X.numel()),
        "sum_dim": (X.sum(1, keepdim=True), 0.5 * 6),
        "cumsum": (X.cumsum(1), 0.5 * torch.arange(1, 7)),
        "mul": (X * Y, half * (ax + ay) + 1),
        "mul_bcast": (X * V1[:6], half * (ax + V1[:6].abs()) + 1),
        "square": (X * X, ax + 1),
        "matmul": (M1 @ M2, mm_bound(M1, M2)),
        "matmul_batched": (B1 @ M2, mm_bound(B1, M2)),
        "matmul_fixed": (M1 @ M2, mm_bound(M1, M2)),
        "matmul_fixed_again": (B1 @ M2, mm_bound(B1, M2)),
        "dot": (V1 @ V1, V1.abs().sum() + 1),
        "outer": (torch.outer(V1, V2), half * (V1.abs()[:, None] + V2.abs()[None, :]) + 1),
        "conv1d": (F.conv1d(SIG, K1, padding=1), conv_bound(F.conv1d, SIG, K1, padding=1)),
        "conv2d": (F.conv2d(IMG, KER, **CONV), conv_bound(F.conv2d, IMG, KER, **CONV)),
        "conv_transpose1d": (
            F.conv_transpose1d(SIG, ct1, stride=2),
            conv_bound(F.conv_transpose1d, SIG, ct1, stride=2),
        ),
        "conv_transpose2d": (
            F.conv_transpose2d(TIN, TK, stride=2, padding=1),
            conv_bound(F.conv_transpose2d, TIN, TK, stride=2, padding=1),
        ),
        "einsum": (B1 @ M2, mm_bound(B1, M2)),
        "matmul_public": (M1 @ M2, mm_bound(M1, M2)),
        "matmul_public_left": (M1 @ M2, mm_bound(M1, M2)),
        "conv2d_public": (F.conv2d(IMG, KER, **CONV), conv_bound(F.conv2d, IMG, KER, **CONV)),
        "mul_public_bilinear_int": (X * 2, 1.0),
        "mul_by_mask": (X * MASK, 0.5),
    }


def check_all(results: list[dict[str, torch.Tensor]]) -> None:
    ref = expected()
    for name, got in results[0].items():
        value, bound = ref[name]
        check(got, value, bound, name)
    for other in results[1:]:
        for name, got in other.items():
            assert torch.equal(got, results[0][name]), name


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_every_protocol_against_torch(world_size: int, dealer: str, run_parties: Run) -> None:
    check_all(run_parties(program, world_size, dealer=dealer))


def test_two_parties_with_dealer_truncation(run_parties: Run) -> None:
    check_all(run_parties(program, 2, dealer="ttp", truncation="dealer"))


def test_four_parties_mul_and_matmul(run_parties: Run) -> None:
    def fn(party: Party) -> dict[str, torch.Tensor]:
        x, y = sh(X, 0, party), sh(Y, 3, party)
        m1, m2 = sh(M1, 1, party), sh(M2, 2, party)
        return {
            "mul": rv(A.product("mul", x, y, party, shift=FB), party),
            "matmul": rv(A.product("matmul", m1, m2, party, shift=FB), party),
            "square": rv(A.square(x, party, shift=FB), party),
        }

    res = run_parties(fn, 4, dealer="ttp")
    ref = expected()
    for name, got in res[0].items():
        check(got, *ref[name], name)


@pytest.mark.parametrize(("n", "dealer"), [(2, "tfp"), (3, "ttp")])
def test_twenty_chained_products_keep_the_bound(n: int, dealer: str, run_parties: Run) -> None:
    x0, ys = gen((64,), 20, 2.0), [gen((64,), 21 + t, 1.0) for t in range(20)]

    def fn(party: Party) -> list[torch.Tensor]:
        x = sh(x0, 0, party)
        out = []
        for t, y in enumerate(ys):
            x = A.product("mul", x, sh(y, t % party.world_size, party), party, shift=FB)
            out.append(rv(x, party))
        return out

    got = run_parties(fn, n, dealer=dealer)[0]
    # error recursion in ulps: e' = |y| e + |x|/2 (y's encoding) + |y|/2 * ... + 1 (truncation)
    bound, plain = torch.full((64,), 0.5, dtype=torch.float64), x0.clone()
    for t, y in enumerate(ys):
        bound = y.abs() * bound + 0.5 * plain.abs() + 1 + bound * 0.5 * U
        plain = plain * y
        check(got[t], plain, bound, f"product {t + 1}")


def test_bad_inputs_name_the_party(run_parties: Run) -> None:
    def fn(party: Party) -> list[str]:
        x = party.przs((2, 3))
        msgs = []
        for attempt in (
            lambda: A.product("mul", x, party.przs((3, 2)), party, shift=FB),
            lambda: A.product("matmul", x, x, party, shift=FB),
            lambda: A.product("mul", x, torch.zeros(2, 3), party, shift=FB),
            lambda: A.product("mul", x, x, party, shift=-1),
            lambda: A.public_product("mul", x, torch.zeros(3), party, shift=FB),
            lambda: A.div_public(x, 0, party),
            lambda: A.div_public(x, torch.tensor([1.0, 0.0, 2.0]), party),
            lambda: A.product("matmul", x.flatten(), x, party, shift=FB),
            lambda: A.product("conv2d", x, x, party, shift=FB),
            lambda: A.public_product("exp", x, torch.ones(1, dtype=torch.int64), party, shift=FB),
            lambda: A.public_product(
                "matmul", x, torch.ones(4, 4, dtype=torch.int64), party, shift=FB
            ),
        ):
            try:
                attempt()
            except (TypeError, ValueError, ArithmeticError) as exc:
                msgs.append(f"{type(exc).__name__}: {exc}")
        return msgs

    for rank, msgs in enumerate(run_parties(fn, 2)):
        assert len(msgs) == 11, msgs
        named = [m for m in msgs if f"party {rank}" in m]
        assert len(named) == 11, msgs
        assert any("ZeroDivisionError" in m for m in msgs)


def test_local_truncation_is_refused_for_three_parties(run_parties: Run) -> None:
    def fn(party: Party) -> None:
        A.product("mul", party.przs((2,)), party.przs((2,)), party, shift=FB)

    with pytest.raises(ConfigurationError, match="2 parties"):
        run_parties(fn, 3, truncation="local")


@pytest.mark.parametrize(("n", "dealer", "trunc"), [(2, "tfp", "auto"), (3, "ttp", "dealer")])
def test_empty_and_zero_dim_shares(n: int, dealer: str, trunc: str, run_parties: Run) -> None:
    def fn(party: Party) -> list[torch.Tensor]:
        out = []
        for shape in [(0,), (), (3, 0)]:
            x = sh(torch.full(shape, 1.5, dtype=torch.float64), 0, party)
            out += [
                A.product("mul", x, x, party, shift=FB),
                A.square(x, party, shift=FB),
                A.div_public(x, 3, party),
            ]
        e, w = sh(torch.ones(0, 4, dtype=torch.float64), 0, party), sh(torch.ones(4, 2), 1, party)
        out.append(A.product("matmul", e, w, party, shift=FB))
        return [rv(t, party) for t in out]

    got = run_parties(fn, n, dealer=dealer, truncation=trunc)[0]
    assert [tuple(t.shape) for t in got] == [(0,)] * 3 + [()] * 3 + [(3, 0)] * 3 + [(0, 2)]
    check(got[3], torch.tensor(2.25, dtype=torch.float64), 3.0, "0-d mul")
    check(got[4], torch.tensor(2.25, dtype=torch.float64), 3.0, "0-d square")
    check(got[5], torch.tensor(0.5, dtype=torch.float64), 1.5, "0-d div")


def test_costs_of_mul_and_matmul(run_parties: Run) -> None:
    # Default (exact dealer truncation, any N): 2 rounds — the Beaver opening, then the
    # truncation's 8 B per output element — and party 0 makes ONE dealer request for triple +
    # pair. Explicit 2-party local truncation: the floor, 1 round and 16 B per element.
    def fn(party: Party) -> list[tuple[int, int, int]]:
        x, y = sh(X, 0, party), sh(Y, 1, party)
        m1, m2 = sh(M1, 0, party), sh(M2, 1, party)
        rows = []
        for op, a, b in (("mul", x, y), ("matmul", m1, m2)):
            s = party.comm.stats
            s.reset()
            A.product(op, a, b, party, shift=FB)
            dealer = s.by_tag.get("dealer.request")
            party_rounds = sum(v.rounds for k, v in s.by_tag.items() if not k.startswith("dealer"))
            party_bytes = sum(
                v.bytes_sent for k, v in s.by_tag.items() if not k.startswith("dealer")
            )
            rows.append((party_rounds, party_bytes, dealer.messages_sent if dealer else 0))
        return rows

    two = run_parties(fn, 2, dealer="ttp", truncation="local")
    for rank, rows in enumerate(two):
        assert rows[0] == (1, 16 * X.numel(), int(rank == 0))
        assert rows[1] == (1, 8 * (M1.numel() + M2.numel()), int(rank == 0))
    two = run_parties(fn, 2, dealer="ttp")
    for rank, rows in enumerate(two):
        assert rows[0] == (2, 8 * (2 * X.numel() + X.numel()), int(rank == 0))
        out = M1.shape[0] * M2.shape[1]
        assert rows[1] == (2, 8 * (M1.numel() + M2.numel() + out), int(rank == 0))
    three = run_parties(fn, 3, dealer="ttp")
    for rank, rows in enumerate(three):
        assert rows[0] == (2, 2 * 8 * (2 * X.numel() + X.numel()), int(rank == 0))
        out = M1.shape[0] * M2.shape[1]
        assert rows[1] == (2, 2 * 8 * (M1.numel() + M2.numel() + out), int(rank == 0))
