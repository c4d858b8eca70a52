"""The user API around encrypted tensors: share files, load_from_party, modules, profile, debug,
check_model."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import crypten_lite as cl
from crypten_lite.errors import ConfigurationError, UnsupportedOperationError
from crypten_lite.tensor import _OPS, OpEntry

ULP = 2.0**-16
GEN = torch.Generator().manual_seed(99)
aten = torch.ops.aten


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def test_save_and_load_shares(run_parties, world_size, tmp_path):
    x = rand(3, 2)
    model = nn.Linear(2, 2)

    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(x)
            path = tmp_path / f"x.{party.rank}.safetensors"
            cl.save(xe, path)
            back = cl.load(path)
            m = cl.encrypt_module(copy.deepcopy(model))
            sd_path = tmp_path / f"model.{party.rank}.safetensors"
            cl.save(m.state_dict(), sd_path)
            state = cl.load(sd_path)
            m2 = cl.encrypt_module(nn.Linear(2, 2))
            m2.load_state_dict(state)
            wrong = tmp_path / f"x.{(party.rank + 1) % party.world_size}.safetensors"
            party.comm.barrier()
            with pytest.raises(ConfigurationError, match="rank"):
                cl.load(wrong)
            return back.get_plain_text(), m2.weight.get_plain_text()

    got, weight = run_parties(body, world_size)[0]
    torch.testing.assert_close(got, x, atol=ULP, rtol=0)
    torch.testing.assert_close(weight, model.weight.detach(), atol=ULP, rtol=0)


def test_share_files_are_safetensors_with_a_header(run_parties, tmp_path):
    from safetensors import safe_open

    def body(party):
        with cl.use_party(party):
            cl.save(cl.cryptensor(torch.ones(2)), tmp_path / f"s{party.rank}.safetensors")

    run_parties(body, 2)
    with safe_open(str(tmp_path / "s1.safetensors"), framework="pt") as f:
        meta = f.metadata()
        assert f.get_tensor("tensor").dtype == torch.int64
    assert meta["format"] == "crypten_lite.shares/1" and meta["rank"] == "1"


def test_load_from_party(run_parties, world_size, tmp_path):
    data = {"a": rand(2, 3), "b": rand(4)}
    save_file(data, str(tmp_path / "plain.safetensors"))
    np.save(tmp_path / "arr.npy", rand(3).numpy())

    def body(party):
        with cl.use_party(party):
            src = party.world_size - 1
            mine = tmp_path / "plain.safetensors" if party.rank == src else None
            out = cl.load_from_party(mine, src=src)
            arr = cl.load_from_party(tmp_path / "arr.npy" if party.rank == 0 else None, src=0)
            return {k: v.get_plain_text() for k, v in out.items()}, arr.get_plain_text()

    got, arr = run_parties(body, world_size)[0]
    for k, v in data.items():
        torch.testing.assert_close(got[k], v, atol=ULP, rtol=0)
    torch.testing.assert_close(
        arr, torch.from_numpy(np.load(tmp_path / "arr.npy")), atol=ULP, rtol=0
    )


def test_encrypt_and_decrypt_module_keep_parameters(run_parties):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    model[0].bias.requires_grad_(False)

    def body(party):
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(model))
            kinds = {
                n: (type(p).__name__, isinstance(p, nn.Parameter), p.requires_grad)
                for n, p in m.named_parameters()
            }
            bufs = {n: cl.is_encrypted(b) for n, b in m.named_buffers()}
            cl.decrypt_module(m)
            return kinds, bufs, m.state_dict()

    kinds, bufs, state = run_parties(body, 2)[0]
    assert kinds["0.weight"] == ("MPCTensor", True, True)
    assert kinds["0.bias"] == ("MPCTensor", True, False)
    assert bufs == {"1.running_mean": True, "1.running_var": True, "1.num_batches_tracked": False}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(state[k].to(v.dtype), v, atol=ULP, rtol=0)


def test_from_pytorch_wrapper(run_parties):
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    x = rand(4, 3)

    def body(party):
        with cl.use_party(party):
            model = cl.nn.from_pytorch(copy.deepcopy(net), torch.empty(1, 3))
            model.encrypt(src=0)
            assert model.encrypted
            out = model(cl.cryptensor(x)).get_plain_text()
            model.decrypt()
            return out, model.encrypted

    out, still = run_parties(body, 2)[0]
    assert not still
    torch.testing.assert_close(out, net(x).detach(), atol=32 * ULP, rtol=0)
    assert cl.nn.Linear is nn.Linear


def test_profile_table_counts_rounds_and_bytes(run_parties):
    a, b = rand(4, 5), rand(5, 3)

    def body(party):
        with cl.use_party(party):
            ae, be = cl.cryptensor(a), cl.cryptensor(b)
            with cl.profile() as prof:
                (ae @ be).relu().sum().get_plain_text()
            return prof

    # Default exact truncation: the Beaver opening (8 B per operand element) and the
    # truncation's opening (8 B per output element), 2 rounds; with local truncation, 1 round.
    prof = run_parties(body, 2)[0]
    mm = prof.rows["aten.mm"]
    assert mm.calls == 1 and mm.rounds == 2 and mm.bytes_sent == 8 * (4 * 5 + 5 * 3 + 4 * 3)
    prof = run_parties(body, 2, truncation="local")[0]
    mm = prof.rows["aten.mm"]
    assert mm.calls == 1 and mm.rounds == 1 and mm.bytes_sent == 8 * (4 * 5 + 5 * 3)
    assert prof.rows["aten.relu"].rounds == 4
    assert "(outside ops)" in prof.rows  # the final opening
    table = prof.table()
    assert "aten.mm" in table and "TOTAL" in table


def test_debug_reports_the_first_op_out_of_bounds(run_parties, monkeypatch):
    x = rand(3)
    good = _OPS[aten.neg.default]

    def wrong_neg(t):
        return good.impl(t) + 0.5  # a deliberately broken implementation

    monkeypatch.setitem(_OPS, aten.neg.default, OpEntry(wrong_neg, None, "arithmetic", True))

    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(x)
            with cl.debug(validate=True) as report:
                y = (xe * 2).neg() + 1
            with cl.debug(validate=True, raise_on_failure=True), pytest.raises(AssertionError):
                (-xe).sum()
            return report, y.get_plain_text()

    report, _ = run_parties(body, 2)[0]
    assert [c.op for c in report.checks] == [
        "aten.mul.Tensor",
        "aten.neg.default",
        "aten.add.Tensor",
    ]
    bad = report.first_failure
    assert bad is not None and bad.op == "aten.neg.default" and bad.max_error > 0.4
    assert report.checks[0].ok and report.checks[2].ok


class ManyGaps(nn.Module):
    """Uses several ops encrypted tensors do not support, and one secret branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = torch.digamma(h) + torch.erfinv(h.clamp(-0.5, 0.5))
        if h.sum() > 0:  # data-dependent branch: reads a secret
            h = h * 2
        return torch.fft.fft(h).real.sum(-1) + torch.lgamma(h)[:, 0]


def test_check_model_lists_every_gap_at_once():
    report = cl.check_model(ManyGaps(), torch.randn(2, 4))
    assert not report.ok
    ops = report.ops
    for needed in ("aten.digamma.default", "aten.erfinv.default", "bool()", "aten.lgamma.default"):
        assert needed in ops, (needed, ops)
    assert any("fft" in op for op in ops)
    text = str(report)
    assert "torch.erfinv" in text and "torch.digamma" in text


class SecretLabels(nn.Module):
    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(x, labels.long())


def test_check_model_reports_unsupported_arguments():
    report = cl.check_model(SecretLabels(), (torch.randn(3, 4), torch.tensor([0.0, 2.0, 1.0])))
    ops = report.ops
    assert "aten._to_copy.default" in ops and "aten.nll_loss_forward.default" in ops, ops
    assert "encrypted class indices" in str(report)


def test_check_model_passes_a_supported_model_and_from_pytorch_refuses_gaps():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    assert cl.check_model(net, torch.randn(1, 1, 4, 5)).ok
    with pytest.raises(UnsupportedOperationError, match="erfinv"):
        cl.nn.from_pytorch(ManyGaps(), torch.randn(2, 4))


def test_cryptensor_src_and_shape(run_parties):
    x = rand(2, 5)

    def body(party: Any):
        with cl.use_party(party):
            a = cl.cryptensor(x if party.rank == 1 else None, src=1)
            b = cl.cryptensor(x if party.rank == 0 else torch.empty(2, 5), shape=(2, 5))
            return a.get_plain_text(), b.get_plain_text()

    a, b = run_parties(body, 2)[0]
    torch.testing.assert_close(a, x, atol=ULP, rtol=0)
    torch.testing.assert_close(b, x, atol=ULP, rtol=0)
