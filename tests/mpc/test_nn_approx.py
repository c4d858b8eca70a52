"""torch.nn modules and losses that need the numerical approximations (exp, log, reciprocal,
inverse square root, sigmoid, tanh, erf, softmax): forward and backward against plain torch,
a small CNN and a two-layer transformer encoder.

Tolerances combine fixed-point rounding (f = 16) with the approximation errors documented in
``protocols.approximations``; inputs stay inside the documented domains.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import crypten_lite as cl

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("crypten_lite.protocols.approximations") is None,
    reason="protocols.approximations has not landed yet",
)

GEN = torch.Generator().manual_seed(21)
ATOL, RTOL = 2e-2, 2e-2


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def seeded(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return make()


def forward_backward(
    run_parties: Callable[..., list[Any]],
    n: int,
    module: nn.Module,
    x: torch.Tensor,
    proj: torch.Tensor,
    *,
    train: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encrypted results on party 0, plaintext results): output, input grad, parameter
    grads and updated floating buffers."""

    def body(party: Any) -> dict[str, torch.Tensor]:
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(module).train(train))
            xe = cl.cryptensor(x, requires_grad=True)
            out = m(xe)
            (out * proj).sum().backward()
            res = {"out": out.get_plain_text(), "grad:input": xe.grad.get_plain_text()}
            res.update({f"grad:{k}": p.grad.get_plain_text() for k, p in m.named_parameters()})
            res.update(
                {f"buf:{k}": b.get_plain_text() for k, b in m.named_buffers() if cl.is_encrypted(b)}
            )
            return res

    got = run_parties(body, n)[0]
    ref = copy.deepcopy(module).train(train)
    xp = x.clone().requires_grad_()
    out = ref(xp)
    (out * proj).sum().backward()
    want = {"out": out.detach(), "grad:input": xp.grad}
    want.update({f"grad:{k}": p.grad for k, p in ref.named_parameters()})
    want.update({f"buf:{k}": b for k, b in ref.named_buffers() if b.is_floating_point()})
    return got, want


def assert_match(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol=ATOL, rtol=RTOL):
    assert set(want) <= set(got), set(want) - set(got)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, atol=atol, rtol=rtol, msg=key)


class SelfAttention(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


class CausalSDPA(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = x, x * 0.5, x + 1.0
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], bool]] = {
    "layernorm": (lambda: nn.LayerNorm(6), (3, 6), True),
    "batchnorm1d_train": (lambda: nn.BatchNorm1d(3), (6, 3), True),
    "batchnorm2d_train": (lambda: nn.BatchNorm2d(2), (3, 2, 2, 2), True),
    "batchnorm2d_eval": (lambda: nn.BatchNorm2d(2), (3, 2, 2, 2), False),
    "gelu": (lambda: nn.GELU(), (4, 5), True),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), (4, 5), True),
    "silu": (lambda: nn.SiLU(), (4, 5), True),
    "sigmoid": (lambda: nn.Sigmoid(), (4, 5), True),
    "tanh": (lambda: nn.Tanh(), (4, 5), True),
    "softmax": (lambda: nn.Softmax(dim=1), (4, 5), True),
    "log_softmax": (lambda: nn.LogSoftmax(dim=-1), (4, 5), True),
    "mha_weights": (lambda: SelfAttention(True), (2, 3, 8), True),
    "mha_fused": (lambda: SelfAttention(False), (2, 3, 8), False),
    "sdpa_causal": (CausalSDPA, (1, 2, 4, 4), True),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_forward_backward(run_parties, world_size, name):
    make, shape, train = MODULES[name]
    module, x = seeded(make), rand(*shape)
    with torch.no_grad():
        proj = torch.randn(module.train(train)(x).shape, generator=GEN)
    got, want = forward_backward(run_parties, world_size, module, x, proj, train=train)
    assert_match(got, want)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(F.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))


def test_small_cnn_with_cross_entropy(run_parties, world_size):
    model, x = seeded(SmallCNN), rand(4, 1, 6, 6)
    labels = torch.tensor([0, 3, 1, 2])

    def body(party):
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(model))
            loss = F.cross_entropy(m(cl.cryptensor(x)), labels)
            loss.backward()
            return loss.get_plain_text(), {
                k: p.grad.get_plain_text() for k, p in m.named_parameters()
            }

    loss, grads = run_parties(body, world_size)[0]
    ref = copy.deepcopy(model)
    ref_loss = F.cross_entropy(ref(x), labels)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss.detach(), atol=ATOL, rtol=RTOL)
    for k, p in ref.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=ATOL, rtol=5e-2, msg=k)


def test_two_layer_transformer_encoder(run_parties, world_size):
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = seeded(lambda: nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))
    x = rand(2, 3, 8)
    proj = rand(2, 3, 8)
    got, want = forward_backward(run_parties, world_size, model, x, proj)
    assert_match(got, want, atol=5e-2, rtol=5e-2)


LOSSES: dict[str, Callable[[Any, bool], Any]] = {}
_X = rand(6, 4)
_LABELS = torch.tensor([0, 3, 1, 2, 3, 0])
_PROBS = torch.softmax(rand(6, 4), 1)
_TARGETS = torch.rand(6, 4, generator=GEN)


def _maybe(t: torch.Tensor, enc: bool) -> Any:
    return cl.cryptensor(t) if enc else t


LOSSES = {
    "cross_entropy": lambda x, enc: nn.CrossEntropyLoss()(x, _LABELS),
    "cross_entropy_weighted_smoothed": lambda x, enc: nn.CrossEntropyLoss(
        weight=torch.tensor([1.0, 2.0, 0.5, 1.0]), label_smoothing=0.1
    )(x, _LABELS),
    "cross_entropy_encrypted_probs": lambda x, enc: nn.CrossEntropyLoss()(x, _maybe(_PROBS, enc)),
    "nll_ignore_index": lambda x, enc: nn.NLLLoss(ignore_index=3)(F.log_softmax(x, 1), _LABELS),
    "bce": lambda x, enc: nn.BCELoss()(torch.sigmoid(x), _maybe(_TARGETS, enc)),
    "bce_with_logits": lambda x, enc: nn.BCEWithLogitsLoss()(x, _maybe(_TARGETS, enc)),
    "mse_sum": lambda x, enc: nn.MSELoss(reduction="sum")(x, _maybe(_TARGETS, enc)),
    "l1": lambda x, enc: nn.L1Loss()(x, _TARGETS),
    "smooth_l1": lambda x, enc: nn.SmoothL1Loss(beta=0.5)(x, _TARGETS),
    "huber": lambda x, enc: nn.HuberLoss(delta=0.7)(x, _TARGETS),
    "kl_div": lambda x, enc: nn.KLDivLoss(reduction="batchmean")(F.log_softmax(x, 1), _PROBS),
}


def test_losses_forward_backward(run_parties, world_size):
    def body(party):
        with cl.use_party(party):
            out = {}
            for name, fn in LOSSES.items():
                xe = cl.cryptensor(_X, requires_grad=True)
                loss = fn(xe, True)
                loss.backward()
                out[name] = (loss.get_plain_text(), xe.grad.get_plain_text())
            return out

    got = run_parties(body, world_size)[0]
    for name, fn in LOSSES.items():
        xp = _X.clone().requires_grad_()
        loss = fn(xp, False)
        loss.backward()
        torch.testing.assert_close(got[name][0], loss.detach(), atol=ATOL, rtol=RTOL, msg=name)
        torch.testing.assert_close(got[name][1], xp.grad, atol=ATOL, rtol=RTOL, msg=name)


def test_inference_uses_one_shot_activations_and_debug_finds_no_drift(run_parties, world_size):
    model = seeded(
        lambda: nn.Sequential(
            nn.Linear(5, 6), nn.GELU(), nn.Linear(6, 6), nn.SiLU(), nn.Softmax(-1)
        )
    )
    x = rand(4, 5) * 2

    def body(party):
        with cl.use_party(party), torch.no_grad():
            m = cl.encrypt_module(copy.deepcopy(model))
            xe = cl.cryptensor(x)
            with cl.profile() as prof:
                out = m(xe)
            with cl.debug(validate=True) as report:
                m(xe)
            return out.get_plain_text(), prof, report

    out, prof, report = run_parties(body, world_size)[0]
    torch.testing.assert_close(out, model(x).detach(), atol=ATOL, rtol=RTOL)
    assert "aten.gelu" in prof.rows and "aten.silu" in prof.rows
    assert report.ok, str(report)
    assert [c.op for c in report.checks][-1] == "aten._softmax.default"
