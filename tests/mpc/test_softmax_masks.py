"""Softmax and log-softmax over any row length and any spread up to the range limit, masks
written with ``finfo.min``, ``-inf`` and ``-1e9`` (probability exactly 0, as torch), the
saturation rule for public operands, and the 0-dim case (2 and 3 parties)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import crypten_lite as cl
from crypten_lite.errors import EncodingError
from crypten_lite.protocols import approximations as A
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.encoding import SaturationWarning, decode, encode
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
TOL = 2e-3  # the bound on every probability; measured below 5e-5
LIMIT = 2.0**45  # logits in +-2**44: pairwise differences stay inside the ring (2**(62 - f))


def _enc(x: torch.Tensor) -> torch.Tensor:
    return decode(encode(x, 16), 16, torch.float64)


def _rows(n: int, g: torch.Generator) -> torch.Tensor:
    """Rows of length ``n`` at spreads 0.1 .. 2**45, each with a few near-ties at the top."""
    spreads = [0.1, 5.0, 15.0, 80.0, 1e3, LIMIT]
    rows = []
    for s in spreads:
        r = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * s
        r[: min(3, n)] = r.max() - torch.tensor([0.0, 0.5, 3.0])[: min(3, n)]
        rows.append(r)
    return torch.stack(rows)


@pytest.mark.parametrize("n", [2, 10, 64, 128, 1024])
def test_softmax_any_length_and_spread(n: int, world_size: int, run_parties: Run) -> None:
    g = torch.Generator().manual_seed(n)
    x = _rows(n, g)

    def fn(party: Party) -> list[torch.Tensor]:
        sx = share(x if party.rank == 0 else None, 0, party, shape=x.shape)
        out = open_shares([A.softmax(sx, party, -1), A.log_softmax(sx, party, 1)], party)
        assert out is not None
        return [decode(v, 16, torch.float64) for v in out]

    xe = _enc(x)
    for sm, lsm in run_parties(fn, world_size):
        assert (sm - torch.softmax(xe, -1)).abs().max() <= TOL
        assert (sm - torch.softmax(xe, -1)).abs().max() <= 2e-4  # the docstring's bound
        ref = torch.log_softmax(xe, -1)  # float64: values near 2**44 carry ulps of 2**-8
        assert ((lsm - ref).abs() <= 2e-4 + ref.abs() * 2.0**-50).all()


@pytest.mark.parametrize(
    ("truncation", "shapes"),
    [
        # row max (5 / 10 / 14 rounds) + segment exp 6 + quotient 7 + 1 settle
        ("auto", {(4, 10): 19, (4, 64): 24, (2, 128): 28, (3, 2): 14}),
        ("local", {(4, 10): 18, (4, 64): 23, (2, 128): 27, (3, 2): 13}),
    ],
)
def test_softmax_rounds(
    truncation: str, shapes: dict[tuple[int, int], int], run_parties: Run
) -> None:
    """2 parties: ``L + 14`` rounds for a row max of ``L`` rounds (before this change: 26, 31,
    36 exact; 22, 27, 32 local); ``n = 2`` compares no row sum (4 + 6 + 3 + 1 = 14)."""

    def fn(party: Party) -> dict[tuple[int, int], int]:
        got = {}
        for shape in shapes:
            sx = share(torch.zeros(shape) if party.rank == 0 else None, 0, party, shape=shape)
            before = party.comm.stats.total.rounds
            A.softmax(sx, party, -1)
            got[shape] = party.comm.stats.total.rounds - before
        return got

    for res in run_parties(fn, 2, truncation=truncation):
        assert res == shapes


def _scores(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(world)
    scores = torch.randn(2, 3, 6, 6, generator=g) * 4 - 50  # all scores below -40
    keep = torch.ones(6, 6, dtype=torch.bool).tril()
    return scores, keep


def test_fully_masked_row_is_uniform_as_torch(world_size: int, run_parties: Run) -> None:
    """A row masked everywhere with an additive finfo.min mask: torch absorbs the scores into
    finfo.min and returns a uniform row; so does the sentinel."""
    scores = torch.randn(3, 5, generator=torch.Generator().manual_seed(3)) * 3
    mask = torch.zeros(3, 5)
    mask[1] = torch.finfo(torch.float32).min
    mask[2, 3:] = torch.finfo(torch.float32).min
    ref = torch.softmax(scores + mask, -1)

    def body(party: Any) -> torch.Tensor:
        with cl.use_party(party), warnings.catch_warnings():
            warnings.simplefilter("ignore", SaturationWarning)
            return torch.softmax(cl.cryptensor(scores) + mask, -1).get_plain_text()

    for got in run_parties(body, world_size):
        assert (got - ref).abs().max() <= 2e-4


@pytest.mark.parametrize(
    "style", ["finfo_add", "ninf_fill", "finfo_where", "1e9_fill", "sdpa_bool", "sdpa_float"]
)
def test_masks_give_probability_zero(style: str, world_size: int, run_parties: Run) -> None:
    scores, keep = _scores(world_size)
    big = torch.finfo(torch.float32).min

    def apply(s: Any) -> Any:
        if style == "finfo_add":
            return torch.softmax(s + torch.where(keep, 0.0, big), -1)
        if style == "ninf_fill":
            return torch.softmax(s.masked_fill(~keep, float("-inf")), -1)
        if style == "finfo_where":
            return torch.softmax(torch.where(keep, s, torch.tensor(big)), -1)
        if style == "1e9_fill":
            return torch.softmax(s.masked_fill(~keep, -1e9), -1)
        v = torch.eye(6).expand(2, 3, 6, 6)
        q = s  # attention of s against the identity: probabilities times I
        k = torch.eye(6).expand(2, 3, 6, 6) * 1.0
        mask = keep if style == "sdpa_bool" else torch.where(keep, 0.0, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)

    ref = apply(scores)

    def body(party: Any) -> torch.Tensor:
        with cl.use_party(party), warnings.catch_warnings():
            warnings.simplefilter("ignore", SaturationWarning)
            out = apply(cl.cryptensor(scores))
            return out.get_plain_text()

    for got in run_parties(body, world_size):
        assert (got - ref).abs().max() <= TOL
        assert got[ref == 0].abs().max() <= 2.0**-15  # masked: exactly 0 (up to one ulp)


def test_public_operand_rule(run_parties: Run) -> None:
    """Masking operands saturate (warning); NaN and other out-of-range operands raise on every
    party, naming the op."""

    def body(party: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        with cl.use_party(party):
            x = cl.cryptensor(torch.ones(3))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SaturationWarning)
                y = x + torch.tensor([0.0, -float("inf"), float("inf")])
                out["sat"] = str(y.get_plain_text().tolist())
            for name, fn in {
                "nan": lambda: x + float("nan"),
                "mul_inf": lambda: x * float("inf"),
                "mul_huge": lambda: x * torch.tensor(1e30),
            }.items():
                try:
                    fn()
                    out[name] = "no error"
                except EncodingError as exc:
                    out[name] = str(exc)
        return out

    from crypten_lite.ops import _fixed

    _fixed._WARNED.discard("add")  # noqa: SLF001 - the once-per-op memory
    res = run_parties(body, 2)
    lim = 2.0**24
    want = [1.0, -lim, lim]  # absorbed into the sentinel, as float arithmetic absorbs x
    assert res[0]["sat"] == str(want)
    assert "add" in _fixed._WARNED  # noqa: SLF001 - warned (once, by whichever party came first)
    for r in res:  # every party raises alike
        for name in ("nan", "mul_inf", "mul_huge"):
            assert r[name].startswith("party "), (name, r[name])
            assert "public operand of" in r[name], r[name]


def test_zero_dim_softmax(run_parties: Run) -> None:
    def body(party: Any) -> list[float]:
        with cl.use_party(party):
            x = cl.cryptensor(torch.tensor(3.5))
            return [
                float(torch.softmax(x, 0).get_plain_text()),
                float(torch.log_softmax(x, 0).get_plain_text()),
                float(torch.softmax(cl.cryptensor(torch.ones(2, 1)), 1).get_plain_text().sum()),
            ]

    for res in run_parties(body, 2):
        assert res == [1.0, 0.0, 2.0]


@pytest.mark.parametrize(
    ("dealer", "truncation", "world"),
    [("ttp", "auto", 2), ("tfp", "local", 2), ("ttp", "auto", 3)],
)
def test_softmax_segments_dealer_and_truncation(
    dealer: str, truncation: str, world: int, run_parties: Run
) -> None:
    """The dealer process and the 2-party local truncation give the same accuracy: rows whose
    scores sit at every segment of the exp (0 .. -24 below the maximum, and below), a causal
    additive mask of -64 as in the GPT-2 workload, and a tied maximum."""
    g = torch.Generator().manual_seed(11)
    n = 40
    x = torch.linspace(0.0, -30.0, n, dtype=torch.float64).repeat(3, 1)
    x[1] = torch.randn(n, generator=g, dtype=torch.float64) * 6
    x[2] = torch.randn(n, generator=g, dtype=torch.float64) * 2
    x[2, n // 2 :] += -64.0  # the workload's causal mask value
    x[1, :2] = x[1].max() + 1.0  # a tie at the top

    def fn(party: Party) -> torch.Tensor:
        sx = share(x if party.rank == 0 else None, 0, party, shape=x.shape)
        (out,) = open_shares([A.softmax(sx, party, -1)], party)  # type: ignore[misc]
        return decode(out, 16, torch.float64)

    ref = torch.softmax(_enc(x), -1)
    for got in run_parties(fn, world, dealer=dealer, truncation=truncation):
        assert (got - ref).abs().max() <= 2e-4
        assert got[2, n // 2 :].abs().max() == 0  # masked: exactly 0
        assert got[0, -5:].abs().max() == 0  # more than 16 below the maximum: exactly 0


@pytest.mark.parametrize(
    ("score", "truncation", "bound"),
    [(-16.01, "auto", 2e-4), (-12.01, "auto", 2e-4), (-12.01, "local", 2e-3)],
)
def test_softmax_worst_case_rows(
    score: float, truncation: str, bound: float, run_parties: Run
) -> None:
    """1023 scores at one level under the maximum. Just below the exp's floor (-16) they are
    dropped: the maximum's probability moves by ``1023 e**-16 = 1.1e-4``. In the last segment
    (-12, ``e**-12 = 6e-6`` each) the segment weight's rounding adds up over the row: exact
    truncation gives the weights 6 more bits; local keeps ``f + 2`` (documented ``n 1.2e-6``)."""
    x = torch.full((1, 1024), score, dtype=torch.float64)
    x[0, 0] = 0.0

    def fn(party: Party) -> torch.Tensor:
        sx = share(x if party.rank == 0 else None, 0, party, shape=x.shape)
        (out,) = open_shares([A.softmax(sx, party, -1)], party)  # type: ignore[misc]
        return decode(out, 16, torch.float64)

    ref = torch.softmax(_enc(x), -1)
    for got in run_parties(fn, 2, truncation=truncation):
        assert (got - ref).abs().max() <= bound


@pytest.mark.parametrize("frac_bits", [12, 20, 24])
def test_softmax_at_other_precisions(run_parties: Any, frac_bits: int) -> None:
    """Sessions with more fractional bits than the segment layout allows (f > 16) run softmax
    at f = 16 (input truncated exactly, output shifted back): within the documented error,
    never the overflowed products (6e-2 off at f = 20 before)."""
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)) * 3

    def fn(party: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with cl.use_party(party):
            a = cl.cryptensor(x)
            return F.softmax(a, 1).get_plain_text(), F.log_softmax(a, 1).get_plain_text()

    sm, ls = run_parties(fn, 2, frac_bits=frac_bits)[0]
    ulp = 2.0 ** -min(frac_bits, 16)
    assert (sm - F.softmax(x, 1)).abs().max() < 2e-4 + 8 * ulp
    assert (ls - F.log_softmax(x, 1)).abs().max() < 2e-4 + 16 * ulp
