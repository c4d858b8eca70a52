"""Inference defaults of ``encrypt_module``: eval BatchNorms folded into the layer before them,
and weights that reuse their opened Beaver masks under ``no_grad`` / eval. Plain torch on the
unfolded model is the oracle; the opt-outs restore the old behaviour."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import crypten_lite as cl
from crypten_lite.encrypted import _fold_pairs
from crypten_lite.errors import ConfigurationError
from crypten_lite.nn import FoldedBatchNorm

ULP = 2.0**-16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _trained_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    """Running statistics and affine parameters as after training, over a wide range: means
    up to +-8, variances 1e-2 .. 1e2 (scales 0.1 .. 10)."""
    g, c = _gen(seed), bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 4)
        bn.running_var.copy_(10.0 ** (torch.rand(c, generator=g) * 4 - 2))
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g))


class ConvNet(nn.Module):
    """conv-bn-relu, a residual block whose second conv feeds its BatchNorm only, and a
    linear-bn head on (batch, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.bn3 = nn.BatchNorm1d(5)
        for i, bn in enumerate((self.bn1, self.bn2, self.bn3)):
            _trained_bn(bn, i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)
        return self.bn3(self.fc(h.flatten(1)))


def _model() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().eval()


def test_folding_matches_the_unfolded_model_and_drops_the_batchnorms(
    run_parties: Any, world_size: int
) -> None:
    model = _model()
    x = torch.randn(2, 3, 4, 4, generator=_gen(9)) * 8
    with torch.no_grad():
        want = model(x)

    def body(party: Any) -> Any:
        with cl.use_party(party), torch.no_grad():
            outs = {}
            for fold in (True, False):
                m = cl.encrypt_module(copy.deepcopy(model), fold_batchnorm=fold)
                xe = cl.cryptensor(x)
                with cl.profile() as prof:
                    y = m(xe)
                outs[fold] = (y.get_plain_text(), prof.total.rounds, m)
            return outs

    outs = run_parties(body, world_size)[0]
    folded, plain = outs[True], outs[False]
    # conv sums of 36 terms |x| <= 30 after scales up to 10: fixed-point rounding, relative
    tol = {"atol": 256 * ULP, "rtol": 1e-3}
    torch.testing.assert_close(folded[0], want, **tol)
    torch.testing.assert_close(plain[0], want, **tol)
    assert folded[1] < plain[1], (folded[1], plain[1])
    m = folded[2]
    assert [type(m.bn1), type(m.bn2), type(m.bn3)] == [FoldedBatchNorm] * 3
    assert "folded into conv1" in repr(m.bn1)
    assert cl.is_encrypted(m.conv1.bias)  # a bias appears where the conv had none
    assert isinstance(outs[False][2].bn1, nn.BatchNorm2d)


def test_folding_refuses_what_it_cannot_prove() -> None:
    assert _fold_pairs(_model(), set()) == [("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bn3")]
    assert _fold_pairs(_model().train(), set()) == []
    # a public BatchNorm parameter stays a BatchNorm
    assert ("conv1", "bn1") not in _fold_pairs(_model(), {"bn1.weight"})

    class TwoUses(nn.Module):  # the conv's output feeds the BatchNorm and the sum
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            return self.bn(h) + h

    class Twice(nn.Module):  # the same conv called twice
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) + self.conv(x)

    class Untraceable(nn.Module):  # data-dependent control flow
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    assert _fold_pairs(TwoUses().eval(), set()) == []
    assert _fold_pairs(Twice().eval(), set()) == []
    with pytest.warns(RuntimeWarning, match="cannot trace"):
        assert _fold_pairs(Untraceable().eval(), set()) == []
    # a BatchNorm2d never folds into a Linear (channels are not its features)
    seq = nn.Sequential(nn.Conv1d(2, 3, 1), nn.BatchNorm2d(3)).eval()
    assert _fold_pairs(seq, set()) == []


def test_a_folded_linear_batchnorm_refuses_a_3d_input_on_every_party(run_parties: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).eval()

    def body(party: Any) -> str:
        with cl.use_party(party), torch.no_grad():
            m = cl.encrypt_module(copy.deepcopy(model))
            with pytest.raises(ConfigurationError, match="fold_batchnorm=False") as info:
                m(cl.cryptensor(torch.zeros(2, 3, 3)))
            return str(info.value)

    assert all("folded into the Linear `0`" in s for s in run_parties(body, 2))


def test_weights_reuse_masks_by_default_for_inference_only(run_parties: Any, world_size: int):
    """No call to reuse_weight_masks: under no_grad the second pass opens only the activation;
    a training step opens the weight every time and stores nothing; the opt-out never
    reuses; an optimiser step and load_state_dict between passes give the new weights."""
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x = torch.randn(3, 6, generator=_gen(3)) * 8
    target = torch.randn(3, 4, generator=_gen(4))
    new_state = {k: v + 0.5 for k, v in model.state_dict().items()}

    def sent(m: nn.Module, xe: Any) -> tuple[int, Any]:
        with cl.profile() as prof:
            y = m(xe)
        return prof.rows["aten.addmm"].bytes_sent, y

    def body(party: Any) -> dict[str, Any]:
        with cl.use_party(party):
            res: dict[str, Any] = {}
            m = cl.encrypt_module(copy.deepcopy(model))
            xe = cl.cryptensor(x)
            with torch.no_grad():
                res["infer"] = [sent(m, xe)[0] for _ in range(3)]
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            res["train"] = []
            for _ in range(2):
                nbytes, y = sent(m, xe)
                res["train"].append(nbytes)
                assert m.weight._alias.fixed is None  # nothing stored while training
                opt.zero_grad()
                ((y - target) ** 2).sum().backward()
                opt.step()
            with torch.no_grad():
                res["after_step"] = m(xe).get_plain_text()
                res["weight"] = m.weight.get_plain_text()
                res["bias"] = m.bias.get_plain_text()
                m.load_state_dict({k: cl.cryptensor(v) for k, v in new_state.items()})
                res["after_load"] = m(xe).get_plain_text()
            off = cl.encrypt_module(copy.deepcopy(model), reuse_weight_masks=False)
            with torch.no_grad():
                res["off"] = [sent(off, xe)[0] for _ in range(2)]
            return res

    res = run_parties(body, world_size)[0]
    peers, trunc = world_size - 1, 3 * 4  # exact truncation opens the output
    act, weight = 3 * 6, 6 * 4
    assert res["infer"] == [8 * peers * n for n in (act + weight + trunc, act + trunc, act + trunc)]
    assert res["train"] == [8 * peers * (act + weight + trunc)] * 2
    assert res["off"] == [8 * peers * (act + weight + trunc)] * 2
    tol = {"atol": 128 * ULP, "rtol": 1e-3}
    torch.testing.assert_close(res["after_step"], x @ res["weight"].T + res["bias"], **tol)
    reloaded = copy.deepcopy(model)
    reloaded.load_state_dict(new_state)
    torch.testing.assert_close(res["after_load"], reloaded(x).detach(), **tol)
