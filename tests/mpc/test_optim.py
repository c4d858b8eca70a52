"""Unmodified torch.optim on encrypted parameters, both the single-tensor and foreach paths.

Training loops are plain PyTorch code; the encrypted run's loss curve must track the plaintext
run's within a tolerance set by fixed-point rounding (f = 16) compounded over the steps.
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

GEN = torch.Generator().manual_seed(11)


def train(
    model: nn.Module,
    make_opt: Callable[[Any], torch.optim.Optimizer],
    x: Any,
    y: Any,
    loss_fn: Callable[[Any, Any], Any],
    steps: int,
    encrypted: bool,
) -> list[float]:
    """An ordinary training loop: nothing in it knows about encryption."""
    opt = make_opt(model.parameters())
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.get_plain_text()) if encrypted else float(loss.detach()))
    return losses


def run_both(run_parties, n, model, make_opt, x, y, loss_fn, steps, encrypt_labels=False):
    def body(party):
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(model))
            xe = cl.cryptensor(x)
            ye = cl.cryptensor(y) if encrypt_labels else y
            losses = train(m, make_opt, xe, ye, loss_fn, steps, encrypted=True)
            return losses, [p.get_plain_text() for p in m.parameters()]

    got_losses, got_params = run_parties(body, n)[0]
    ref = copy.deepcopy(model)
    want_losses = train(ref, make_opt, x, y, loss_fn, steps, encrypted=False)
    return got_losses, want_losses, got_params, [p.detach() for p in ref.parameters()]


SGD_VARIANTS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, foreach=False),
    "sgd_foreach": lambda p: torch.optim.SGD(p, lr=0.1, foreach=True),
    "momentum_wd": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, weight_decay=1e-2, foreach=False
    ),
    "momentum_wd_foreach": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True, foreach=True
    ),
}


@pytest.mark.parametrize("variant", sorted(SGD_VARIANTS))
def test_sgd_steps_match_plaintext(run_parties, variant):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(8, 4, generator=GEN), torch.randn(8, 2, generator=GEN)
    got, want, got_p, want_p = run_both(
        run_parties, 2, model, SGD_VARIANTS[variant], x, y, F.mse_loss, steps=3
    )
    assert got == pytest.approx(want, abs=2e-3)
    for g, w in zip(got_p, want_p, strict=True):
        torch.testing.assert_close(g, w, atol=2e-3, rtol=0)


def test_mlp_twenty_sgd_steps_track_plaintext_loss(run_parties, world_size):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 6, generator=GEN)
    y = torch.stack([x[:, 0] - x[:, 1], x[:, 2].abs()], 1)
    got, want, _, _ = run_both(
        run_parties,
        world_size,
        model,
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5),
        x,
        y,
        F.mse_loss,
        steps=20,
        encrypt_labels=True,
    )
    # Tolerance: a few hundred ulps of rounding per step, compounded over 20 steps.
    assert got == pytest.approx(want, abs=5e-3, rel=1e-2)
    assert got[-1] < 0.7 * got[0]
