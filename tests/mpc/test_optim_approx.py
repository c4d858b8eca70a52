"""Training with approximations: logistic regression (sigmoid + BCE) under SGD, and Adam.

Unmodified torch.nn / torch.optim code; the encrypted loss curve must track the plaintext one.
Tolerances: the sigmoid/log approximation errors (``protocols.approximations``) plus
fixed-point rounding, compounded over the steps.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import crypten_lite as cl

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("crypten_lite.protocols.approximations") is None,
    reason="protocols.approximations has not landed yet",
)

GEN = torch.Generator().manual_seed(3)
X = torch.randn(32, 5, generator=GEN)
Y = (X[:, 0] + 0.5 * X[:, 1] - 0.25 > 0).float().unsqueeze(1)


def fit(model, make_opt, x, y, steps, encrypted):
    opt = make_opt(model.parameters())
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.binary_cross_entropy(torch.sigmoid(model(x)), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.get_plain_text()) if encrypted else float(loss.detach()))
    return losses


def run(run_parties, n, make_opt, steps):
    torch.manual_seed(0)
    model = nn.Linear(5, 1)

    def body(party):
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(model))
            return fit(m, make_opt, cl.cryptensor(X), cl.cryptensor(Y), steps, encrypted=True)

    got = run_parties(body, n)[0]
    want = fit(copy.deepcopy(model), make_opt, X, Y, steps, encrypted=False)
    return got, want


def test_logistic_regression_twenty_sgd_steps(run_parties, world_size):
    got, want = run(run_parties, world_size, lambda p: torch.optim.SGD(p, lr=0.5), steps=20)
    assert got == pytest.approx(want, abs=2e-2)
    assert got[-1] < 0.75 * got[0]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_adam_steps(run_parties, foreach):
    # eps must be representable: 1e-8 encodes to 0 at f = 16. It must also dominate the error
    # of sqrt(v_hat) for small gradients: v = (1 - beta2) g**2 falls below 2**-16 for |g| < ~0.1
    # and encodes to 0, so with eps = 1e-2 one step in five drifted by up to 0.05 from
    # plaintext. With eps = 0.1 the update's relative error is bounded by that lost term.
    got, want = run(
        run_parties, 2, lambda p: torch.optim.Adam(p, lr=0.05, eps=1e-1, foreach=foreach), steps=8
    )
    assert got == pytest.approx(want, abs=3e-2)
