"""Unmodified torch.nn modules on encrypted data: forward and backward against plain torch.

Each module is built once in the main thread; every party runs a deep copy with encrypted
parameters (``encrypt_module``) on an encrypted input, backpropagates ``sum(out * proj)`` for a
public random ``proj`` and opens the output, the input gradient and every parameter gradient.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import crypten_lite as cl

ULP = 2.0**-16
GEN = torch.Generator().manual_seed(7)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def seeded(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return make()


def run_module(
    run_parties: Callable[..., list[Any]],
    n: int,
    module: nn.Module,
    x: torch.Tensor,
    *,
    encrypt_model: bool = True,
    encrypt_input: bool = True,
    train: bool = True,
) -> dict[str, torch.Tensor]:
    """Forward + backward on the parties; returns party 0's opened results."""
    with torch.no_grad():
        out_shape = module(x).shape
    proj = torch.randn(out_shape, generator=GEN)

    def body(party: Any) -> dict[str, torch.Tensor]:
        with cl.use_party(party):
            m = copy.deepcopy(module).train(train)
            if encrypt_model:
                cl.encrypt_module(m)
            xe = cl.cryptensor(x, requires_grad=True) if encrypt_input else x
            out = m(xe)
            (out * proj).sum().backward()
            res = {"out": out.get_plain_text() if cl.is_encrypted(out) else out.detach()}
            if encrypt_input:
                res["grad:input"] = xe.grad.get_plain_text()
            for name, p in m.named_parameters():
                if p.grad is not None:
                    g = p.grad
                    res[f"grad:{name}"] = g.get_plain_text() if cl.is_encrypted(g) else g
            return res

    return {"proj": proj, **run_parties(body, n)[0]}


def plain_run(module: nn.Module, x: torch.Tensor, proj: torch.Tensor, train: bool = True):
    m = copy.deepcopy(module).train(train)
    xp = x.clone().requires_grad_()
    out = m(xp)
    (out * proj).sum().backward()
    res = {"out": out.detach(), "grad:input": xp.grad}
    for name, p in m.named_parameters():
        if p.grad is not None:
            res[f"grad:{name}"] = p.grad
    return res


def compare(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float, rtol: float):
    for key, value in want.items():
        if key not in got:
            continue
        torch.testing.assert_close(got[key], value, atol=atol, rtol=rtol, msg=key)
    assert set(k for k in want if k.startswith("grad:")) <= set(got) | {"grad:input"}


LINEAR_MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "linear": (lambda: nn.Linear(5, 3), (4, 5)),
    "linear_3d": (lambda: nn.Linear(4, 2), (2, 3, 4)),
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), (2, 2, 6)),
    "conv2d_stride_pad": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 5, 5)),
    "conv2d_groups_dilation": (lambda: nn.Conv2d(4, 4, 2, groups=2, dilation=2), (1, 4, 6, 6)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1), (1, 2, 3, 3)),
    "avgpool": (
        lambda: nn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
        (1, 2, 4, 4),
    ),
    "adaptive_avgpool": (lambda: nn.AdaptiveAvgPool2d((2, 3)), (1, 2, 5, 7)),
    "flatten_linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), (2, 3, 2, 2)),
    "dropout_eval": (lambda: nn.Dropout(0.5), (3, 4)),
}


@pytest.mark.parametrize("name", sorted(LINEAR_MODULES))
def test_linear_modules_forward_backward(run_parties, world_size, name):
    make, shape = LINEAR_MODULES[name]
    module, x = seeded(make), rand(*shape)
    train = name != "dropout_eval"
    got = run_module(run_parties, world_size, module, x, train=train)
    want = plain_run(module, x, got["proj"], train=train)
    compare(got, want, atol=256 * ULP, rtol=1e-3)


NONLINEAR_MODULES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "relu_mlp": (lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), (5, 4)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), (3, 4)),
    "hardtanh": (lambda: nn.Hardtanh(-0.5, 0.5), (3, 4)),
    "relu6": (lambda: nn.ReLU6(), (3, 4)),
    "maxpool_ceil_pad": (
        lambda: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        (1, 2, 5, 5),
    ),
    "maxpool_dilation": (lambda: nn.MaxPool2d(2, dilation=2), (2, 1, 5, 5)),
    "adaptive_maxpool": (lambda: nn.AdaptiveMaxPool2d((2, 3)), (1, 2, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(NONLINEAR_MODULES))
def test_comparison_modules_forward_backward(run_parties, world_size, name):
    make, shape = NONLINEAR_MODULES[name]
    module, x = seeded(make), rand(*shape) * 3
    got = run_module(run_parties, world_size, module, x)
    want = plain_run(module, x, got["proj"])
    compare(got, want, atol=256 * ULP, rtol=1e-3)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)) + x
        return self.fc(h.flatten(1))


def test_residual_block(run_parties, world_size):
    module, x = seeded(Residual), rand(2, 2, 4, 4)
    got = run_module(run_parties, world_size, module, x)
    want = plain_run(module, x, got["proj"])
    compare(got, want, atol=512 * ULP, rtol=1e-3)


def test_plaintext_model_on_encrypted_input(run_parties):
    module, x = seeded(lambda: nn.Sequential(nn.Linear(4, 3), nn.ReLU())), rand(5, 4)

    def body(party):
        with cl.use_party(party), torch.no_grad():
            return module(cl.cryptensor(x)).get_plain_text()

    torch.testing.assert_close(run_parties(body, 2)[0], module(x).detach(), atol=64 * ULP, rtol=0)


def test_encrypted_model_on_plaintext_input(run_parties, world_size):
    module, x = seeded(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())), rand(2, 1, 4, 4)
    got = run_module(run_parties, world_size, module, x, encrypt_input=False)
    want = plain_run(module, x, got["proj"])
    compare(got, want, atol=256 * ULP, rtol=1e-3)


def test_embedding_with_public_indices(run_parties, world_size):
    emb = seeded(lambda: nn.Embedding(6, 3, padding_idx=0))
    idx = torch.tensor([[1, 0, 5], [2, 2, 4]])
    proj = rand(2, 3, 3)

    def body(party):
        with cl.use_party(party):
            m = copy.deepcopy(emb)
            cl.encrypt_module(m)
            out = m(idx)
            (out * proj).sum().backward()
            return out.get_plain_text(), m.weight.grad.get_plain_text()

    out, grad = run_parties(body, world_size)[0]
    ref = copy.deepcopy(emb)
    ref_out = ref(idx)
    (ref_out * proj).sum().backward()
    torch.testing.assert_close(out, ref_out.detach(), atol=ULP, rtol=0)
    torch.testing.assert_close(grad, ref.weight.grad, atol=8 * ULP, rtol=0)


def test_dropout_in_training_uses_one_public_mask(run_parties, world_size):
    x = rand(4, 8)

    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(x, requires_grad=True)
            out = F.dropout(xe, 0.5, training=True)
            out.sum().backward()
            return out.get_plain_text(), xe.grad.get_plain_text()

    results = run_parties(body, world_size)
    out, grad = results[0]
    kept = grad != 0
    torch.testing.assert_close(grad[kept], torch.full_like(grad[kept], 2.0), atol=8 * ULP, rtol=0)
    torch.testing.assert_close(
        out, torch.where(kept, 2 * x, torch.zeros_like(x)), atol=8 * ULP, rtol=0
    )
    assert 0 < int(kept.sum()) < x.numel()
    for other_out, _ in results[1:]:
        torch.testing.assert_close(other_out, out)


def test_embedding_with_encrypted_indices(run_parties, world_size):
    emb = seeded(lambda: nn.Embedding(5, 2))
    idx = torch.tensor([3, 0, 4, 3])
    proj = rand(4, 2)

    def body(party):
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(emb))
            out = m(cl.cryptensor(idx.float()))  # secret indices: one-hot by comparisons
            (out * proj).sum().backward()
            return out.get_plain_text(), m.weight.grad.get_plain_text()

    out, grad = run_parties(body, world_size)[0]
    ref = copy.deepcopy(emb)
    ref_out = ref(idx)
    (ref_out * proj).sum().backward()
    torch.testing.assert_close(out, ref_out.detach(), atol=ULP, rtol=0)
    torch.testing.assert_close(grad, ref.weight.grad, atol=8 * ULP, rtol=0)


def test_reused_weight_masks_open_the_weight_once(run_parties, world_size):
    model = seeded(lambda: nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Conv1d(1, 2, 3)))
    batches = [rand(3, 6) for _ in range(3)]

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.conv = model[0], model[2]

        def forward(self, x):
            return self.conv(F.relu(self.fc(x)).unsqueeze(1))

    plain = Model()

    def body(party):
        with cl.use_party(party), torch.no_grad():
            m = cl.nn.reuse_weight_masks(cl.encrypt_module(copy.deepcopy(plain)))
            outs, sent = [], []
            for x in batches:
                xe = cl.cryptensor(x)
                with cl.profile() as prof:
                    y = m(xe)
                outs.append(y.get_plain_text())
                sent.append(prof.rows["aten.addmm"].bytes_sent)
            for p in m.parameters():  # an update invalidates the stored mask
                p.add_(1.0)
            after = m(cl.cryptensor(batches[0])).get_plain_text()
            cl.nn.reuse_weight_masks(m, enable=False)
            return outs, sent, after

    outs, sent, after = run_parties(body, world_size)[0]
    for x, y in zip(batches, outs, strict=True):
        torch.testing.assert_close(y, plain(x).detach(), atol=64 * ULP, rtol=1e-3)
    peers = world_size - 1
    trunc = 3 * 4  # the default (exact) dealer truncation opens the output, for any N
    assert sent[0] == 8 * peers * (3 * 6 + 6 * 4 + trunc)  # activation and weight masks
    assert sent[1] == sent[2] == 8 * peers * (3 * 6 + trunc)  # later: the activation only
    shifted = copy.deepcopy(plain)
    with torch.no_grad():
        for p in shifted.parameters():
            p.add_(1.0)
    torch.testing.assert_close(after, shifted(batches[0]), atol=128 * ULP, rtol=1e-3)
