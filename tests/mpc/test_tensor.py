"""MPCTensor: the type, creation, public/secret mixing, views, leaks, unsupported ops.

Every test runs N parties as threads (2 and 3) and compares with plain torch. Inputs are made in
the main thread: parties must agree on public values, and torch's global RNG is shared by the
threads. Tolerances are in ulps of the default encoding (f = 16).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import crypten_lite as cl
from crypten_lite.errors import SecretLeakError, UnsupportedOperationError
from crypten_lite.runtime.ring import logical_rshift
from crypten_lite.tensor import MPCTensor

ULP = 2.0**-16
GEN = torch.Generator().manual_seed(1234)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def on_parties(run_parties: Callable[..., list[Any]], n: int, fn: Callable[[], Any]) -> list[Any]:
    """Run ``fn()`` on every party with that party current; results by rank."""

    def body(party: Any) -> Any:
        with cl.use_party(party):
            return fn()

    return run_parties(body, n)


def close(got: torch.Tensor, want: torch.Tensor, ulps: float = 8.0, rtol: float = 0.0) -> None:
    torch.testing.assert_close(got, want, atol=ulps * ULP, rtol=rtol)


def test_cryptensor_round_trip_repr_and_share(run_parties, world_size):
    x = rand(3, 4)

    def fn():
        xe = cl.cryptensor(x)
        text = repr(xe)
        return xe.get_plain_text(), text, xe.share.dtype, xe.dtype, cl.is_encrypted(xe)

    for rank, (plain, text, sdt, dt, enc) in enumerate(on_parties(run_parties, world_size, fn)):
        close(plain, x, ulps=0.5)
        assert (
            text == f"MPCTensor(shape=(3, 4), encoding=fixed-point f=16, party {rank}/{world_size})"
        )
        assert str(round(float(x[0, 0]), 3)) not in text
        assert (sdt, dt, enc) == (torch.int64, torch.float32, True)


def test_reading_a_secret_raises(run_parties):
    def fn():
        xe = cl.cryptensor(torch.ones(2))
        caught = []
        for attempt in (
            lambda: bool(xe[0]),
            lambda: xe.sum().item(),
            xe.tolist,
            xe.numpy,
            lambda: float(xe[0]),
            lambda: int(xe[0]),
            lambda: [1, 2][xe[0]],
            lambda: 1 if xe[0] > 0 else 0,
        ):
            with pytest.raises(SecretLeakError, match="get_plain_text"):
                attempt()
            caught.append(True)
        with pytest.raises(UnsupportedOperationError, match="never pickled"):
            xe.__reduce_ex__(4)  # what pickle.dumps calls
        return len(caught)

    assert on_parties(run_parties, 2, fn) == [8, 8]


def test_get_plain_text_to_one_party(run_parties):
    x = rand(2, 2)

    def fn():
        return cl.cryptensor(x, src=1).get_plain_text(dst=1)

    res = on_parties(run_parties, 3, fn)
    assert res[0] is None and res[2] is None
    close(res[1], x, ulps=0.5)


def test_public_and_secret_mixing(run_parties, world_size):
    x, y, w = rand(3, 4), rand(3, 4), rand(4)
    ops: dict[str, Callable[[Any, Any, Any], Any]] = {
        "add": lambda a, b, c: a + b + 1.5,
        "sub_rsub": lambda a, b, c: 2.0 - a - b,
        "mul_secret": lambda a, b, c: a * b,
        "mul_public_tensor": lambda a, b, c: a * c,
        "mul_int": lambda a, b, c: a * 3,
        "div_public": lambda a, b, c: a / 7.0,
        "div_pow2": lambda a, b, c: a / 4,
        "square": lambda a, b, c: a * a,
        "addcmul": lambda a, b, c: torch.addcmul(a, b, c, value=0.5),
        "lerp": lambda a, b, c: torch.lerp(a, b, 0.25),
        "neg": lambda a, b, c: -a,
        "sum": lambda a, b, c: a.sum(),
        "sum_dim": lambda a, b, c: a.sum(1, keepdim=True),
        "mean_dim": lambda a, b, c: a.mean(0),
        "cumsum": lambda a, b, c: a.cumsum(1),
        "var": lambda a, b, c: a.var(1),
        "public_left": lambda a, b, c: c - a,
    }

    def fn():
        xe, ye = cl.cryptensor(x), cl.cryptensor(y, src=world_size - 1)
        return {k: f(xe, ye, w).get_plain_text() for k, f in ops.items()}

    res = on_parties(run_parties, world_size, fn)[0]
    for k, f in ops.items():
        close(res[k], f(x, y, w), ulps=16, rtol=1e-4)


def test_public_encrypted_tensors_stay_public(run_parties):
    def fn():
        xe = cl.cryptensor(torch.ones(3))
        ones = torch.ones_like(xe)
        twice = ones * 2 + 1
        before = cl.get_party().comm.stats.total.rounds
        prod = xe * twice  # public operand: local (2 parties: local truncation)
        after = cl.get_party().comm.stats.total.rounds
        return ones.public_value(), twice.public_value(), after - before, prod.get_plain_text()

    for ones, twice, rounds, prod in on_parties(run_parties, 2, fn):
        assert torch.equal(ones, torch.ones(3)) and torch.equal(twice, torch.full((3,), 3.0))
        assert rounds == 0
        close(prod, torch.full((3,), 3.0))


def test_views_alias_and_in_place_writes(run_parties, world_size):
    x = rand(2, 3)

    def fn():
        xe = cl.cryptensor(x)
        base = torch.zeros_like(xe)  # public zeros
        row = base[1]
        row.add_(xe[0])  # writes through a view into the base
        col = base.t()[2]
        col.mul_(2)
        stale = base.public_value()  # the write made the public value stale
        alias = xe.detach()
        alias.sub_(1.0)  # detach aliases: xe changes too (as in torch)
        return base.get_plain_text(), stale, xe.get_plain_text(), base.is_contiguous()

    plain, stale, xe_after, contiguous = on_parties(run_parties, world_size, fn)[0]
    want = torch.zeros(2, 3)
    want[1] += x[0]
    want[:, 2] *= 2
    close(plain, want)
    assert stale is None and contiguous
    close(xe_after, x - 1)


def test_shape_and_indexing_ops(run_parties, world_size):
    x = rand(2, 3, 4)
    idx = torch.tensor([2, 0])
    ops: dict[str, Callable[[Any], Any]] = {
        "view": lambda a: a.view(6, 4),
        "reshape_T": lambda a: a.reshape(3, 8).T,
        "permute": lambda a: a.permute(2, 0, 1),
        "flatten": lambda a: a.flatten(1),
        "squeeze": lambda a: a.unsqueeze(0).squeeze(0),
        "expand": lambda a: a[:, :1].expand(2, 5, 4),
        "slice": lambda a: a[:, 1:, ::2],
        "select": lambda a: a[1, 2],
        "index": lambda a: a[:, idx],
        "index_select": lambda a: a.index_select(2, idx),
        "gather": lambda a: a.gather(2, torch.zeros(2, 3, 1, dtype=torch.long)),
        "cat_public": lambda a: torch.cat([a, torch.ones(2, 3, 1)], dim=2),
        "stack": lambda a: torch.stack([a, a], 0),
        "split": lambda a: torch.split(a, 2, dim=2)[1],
        "chunk": lambda a: a.chunk(3, dim=1)[2],
        "unbind": lambda a: a.unbind(0)[1],
        "flip": lambda a: a.flip(1),
        "roll": lambda a: a.roll(1, 2),
        "repeat": lambda a: a.repeat(1, 2, 1),
        "pad": lambda a: F.pad(a, (1, 1), value=0.5),
        "tril": lambda a: a[0].tril(),
        "masked_fill": lambda a: a.masked_fill(torch.eye(3, 4).bool(), -2.0),
        "where_public": lambda a: torch.where(torch.eye(3, 4).bool(), a, 1.0),
        "contiguous": lambda a: a.transpose(0, 2).contiguous(),
        "clone": lambda a: a.clone(),
    }

    def fn():
        xe = cl.cryptensor(x)
        return {k: f(xe).get_plain_text() for k, f in ops.items()}

    res = on_parties(run_parties, world_size, fn)[0]
    for k, f in ops.items():
        close(res[k], f(x), ulps=1)


def test_matmul_and_convolutions(run_parties, world_size):
    a, b = rand(3, 5), rand(5, 2)
    batch = rand(2, 3, 4)
    img, w2 = rand(1, 2, 5, 5), rand(3, 2, 3, 3)
    sig, w1 = rand(2, 2, 7), rand(4, 2, 3)
    wt = rand(2, 3, 3, 3)
    ops: dict[str, Callable[..., Any]] = {
        "mm": lambda a_, b_: a_ @ b_,
        "mm_public": lambda a_, b_: a_ @ b,
        "public_mm": lambda a_, b_: a.t() @ a_,
        "bmm": lambda a_, b_: torch.bmm(batch, batch.transpose(1, 2)) + a_.sum(),
        "conv2d": lambda a_, b_: F.conv2d(img, w2, stride=2, padding=1) * a_.sum(),
        "linear": lambda a_, b_: F.linear(a_, b_.t(), torch.ones(2)),
        "einsum": lambda a_, b_: torch.einsum("ij,jk->ik", a_, b_),
    }

    def fn():
        ae, be = cl.cryptensor(a), cl.cryptensor(b)
        out = {k: f(ae, be).get_plain_text() for k, f in ops.items()}
        ie, se = cl.cryptensor(img), cl.cryptensor(sig)
        out["conv2d_secret"] = F.conv2d(ie, cl.cryptensor(w2), stride=2, padding=1).get_plain_text()
        out["conv1d_secret"] = F.conv1d(se, cl.cryptensor(w1), padding=1).get_plain_text()
        out["conv_t2d"] = F.conv_transpose2d(ie, cl.cryptensor(wt), stride=2).get_plain_text()
        out["grouped"] = F.conv2d(ie, w2[:2, :1], groups=2).get_plain_text()
        return out

    res = on_parties(run_parties, world_size, fn)[0]
    for k, f in ops.items():
        close(res[k], f(a, b), ulps=64, rtol=1e-4)
    close(res["conv2d_secret"], F.conv2d(img, w2, stride=2, padding=1), ulps=64, rtol=1e-4)
    close(res["conv1d_secret"], F.conv1d(sig, w1, padding=1), ulps=64, rtol=1e-4)
    close(res["conv_t2d"], F.conv_transpose2d(img, wt, stride=2), ulps=64, rtol=1e-4)
    close(res["grouped"], F.conv2d(img, w2[:2, :1], groups=2), ulps=64, rtol=1e-4)


def test_comparisons_and_logic(run_parties, world_size):
    x, y = rand(4, 3), rand(4, 3)

    def fn():
        xe, ye = cl.cryptensor(x), cl.cryptensor(y)
        out = {
            "lt": xe < ye,
            "ge_public": xe >= 0.25,
            "eq": xe == xe,
            "and": (xe > 0) & (ye > 0),
            "not": ~(xe > 0),
            "float_mask": (xe > ye).float() * 2,
        }
        return {k: v.get_plain_text() for k, v in out.items()}

    res = on_parties(run_parties, world_size, fn)[0]
    assert torch.equal(res["lt"], x < y)
    assert torch.equal(res["ge_public"], x >= 0.25)
    assert bool(res["eq"].all())
    assert torch.equal(res["and"], (x > 0) & (y > 0))
    assert torch.equal(res["not"], ~(x > 0))
    close(res["float_mask"], (x > y).float() * 2, ulps=0)


def test_unsupported_op_names_itself_and_the_call(run_parties):
    def fn():
        xe = cl.cryptensor(torch.ones(3))
        with pytest.raises(UnsupportedOperationError) as info:
            torch.erfinv(xe)
        with pytest.raises(UnsupportedOperationError, match="aten.digamma"):
            xe.digamma()
        return str(info.value)

    msg = on_parties(run_parties, 2, fn)[0]
    assert "aten.erfinv.default" in msg and "torch.erfinv" in msg and msg.startswith("party 0:")


def test_deepcopy_keeps_party_and_copies_the_share(run_parties):
    x = rand(3)

    def fn():
        xe = cl.cryptensor(x)
        cp = copy.deepcopy(xe)
        cp.add_(1.0)
        return isinstance(cp, MPCTensor), xe.get_plain_text(), cp.get_plain_text()

    ok, orig, copied = on_parties(run_parties, 2, fn)[0]
    assert ok
    close(orig, x)
    close(copied, x + 1)


def test_binary_ops_of_a_public_constant_run_locally(run_parties):
    def fn():
        xe = cl.cryptensor(torch.ones(2, 2))
        stats = cl.get_party().comm.stats
        start = stats.total.rounds
        y = (xe + 1) * 4 - xe.t() / 2  # integer and power-of-two public operands: local
        return stats.total.rounds - start, y.get_plain_text()

    rounds, y = on_parties(run_parties, 3, fn)[0]
    assert rounds == 1  # only the division by 2 (dealer truncation for 3 parties)
    close(y, torch.full((2, 2), 7.5))


def test_binary_shares_xor_and_shift(run_parties, world_size):
    a, b = torch.tensor([1.5, -2.0, 3.25]), torch.tensor([0.5, 4.0, -1.0])

    def fn():
        xa = cl.cryptensor(a).to_binary()
        xb = cl.cryptensor(b, ptype=cl.ptype.binary)
        out = {
            "xor": (xa ^ xb).get_plain_text(),
            "and": (xa & xb).get_plain_text(),
            "or": (xa | xb).get_plain_text(),
            "shift": ((xa << 2) >> 1).get_plain_text(),
            "public": (xa ^ 0).get_plain_text(),
            "back": (xa ^ xb).to_arithmetic().get_plain_text(),
        }
        with pytest.raises(SecretLeakError):
            bool(xa)
        return out, repr(xa)

    out, text = on_parties(run_parties, world_size, fn)[0]
    ea, eb = (a * 2**16).long(), (b * 2**16).long()

    def dec(words: torch.Tensor) -> torch.Tensor:
        return words.double().div(2**16).float()

    close(out["xor"], dec(ea ^ eb), ulps=0)
    close(out["and"], dec(ea & eb), ulps=0)
    close(out["or"], dec(ea | eb), ulps=0)
    close(out["shift"], dec(logical_rshift(ea << 2, 1)), ulps=0)  # >> is logical on words
    close(out["public"], a, ulps=0)
    close(out["back"], dec(ea ^ eb), ulps=0)
    assert text.startswith("BinaryMPCTensor(shape=(3,), encoding=XOR words")


def test_max_min_argmax_over_a_dimension(run_parties, world_size):
    x = rand(3, 7)
    proj = rand(3)

    def fn():
        xe = cl.cryptensor(x, requires_grad=True)
        values, idx = xe.max(1)
        (values * proj).sum().backward()
        return {
            "max": values.get_plain_text(),
            "idx": idx.get_plain_text(),
            "grad": xe.grad.get_plain_text(),
            "min0": xe.min(0, keepdim=True)[0].get_plain_text(),
            "argmax": xe.argmax().get_plain_text(),
            "amax": xe.amax(1).get_plain_text(),
            "max_all": xe.max().get_plain_text(),
        }

    res = on_parties(run_parties, world_size, fn)[0]
    xp = x.clone().requires_grad_()
    values, idx = xp.max(1)
    (values * proj).sum().backward()
    close(res["max"], values.detach(), ulps=0.5)
    assert torch.equal(res["idx"], idx) and res["idx"].dtype == torch.int64
    close(res["grad"], xp.grad, ulps=4)
    close(res["min0"], x.min(0, keepdim=True)[0], ulps=0.5)
    assert int(res["argmax"]) == int(x.argmax())
    close(res["amax"], x.amax(1), ulps=0.5)
    close(res["max_all"], x.max(), ulps=0.5)
