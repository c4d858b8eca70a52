"""torch.autograd on encrypted tensors: leaves, accumulation, no_grad, detach, autograd.grad."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crypten_lite as cl

ULP = 2.0**-16
GEN = torch.Generator().manual_seed(5)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def test_gradients_accumulate_and_are_encrypted(run_parties, world_size):
    x, w = rand(4, 3), rand(3, 2)

    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(x)
            we = cl.cryptensor(w, requires_grad=True)
            for _ in range(2):  # two backward passes accumulate into .grad
                (xe @ we).square().mean().backward()
            g = we.grad
            return cl.is_encrypted(g), g.get_plain_text(), xe.grad

    enc, grad, xgrad = run_parties(body, world_size)[0]
    wp = w.clone().requires_grad_()
    for _ in range(2):
        (x @ wp).square().mean().backward()
    assert enc and xgrad is None
    torch.testing.assert_close(grad, wp.grad, atol=64 * ULP, rtol=1e-3)


def test_no_grad_detach_and_requires_grad(run_parties):
    x = rand(3)

    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(x, requires_grad=True)
            with torch.no_grad():
                y = xe * 2
            d = (xe * 3).detach()
            z = cl.cryptensor(x).requires_grad_()
            out = (z * d).sum()
            out.backward()
            return (
                y.requires_grad,
                y.grad_fn is None,
                d.requires_grad,
                xe.is_leaf,
                z.grad.get_plain_text(),
                type(out.grad_fn).__name__,
            )

    y_rg, no_fn, d_rg, leaf, zgrad, fn_name = run_parties(body, 2)[0]
    assert (y_rg, no_fn, d_rg, leaf) == (False, True, False, True)
    torch.testing.assert_close(zgrad, 3 * x, atol=8 * ULP, rtol=0)
    assert fn_name == "SumBackward0"


def test_autograd_grad_and_retain_graph(run_parties, world_size):
    x = rand(5)

    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(x, requires_grad=True)
            y = F.relu(xe) * xe
            (g,) = torch.autograd.grad(y.sum(), xe, retain_graph=True)
            y.sum().backward()
            return g.get_plain_text(), xe.grad.get_plain_text()

    g, acc = run_parties(body, world_size)[0]
    want = torch.where(x > 0, 2 * x, torch.zeros_like(x))
    torch.testing.assert_close(g, want, atol=8 * ULP, rtol=0)
    torch.testing.assert_close(acc, want, atol=8 * ULP, rtol=0)


def test_relu_backward_reuses_the_sign_bits(run_parties):
    x = rand(6)

    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(x, requires_grad=True)
            y = F.relu(xe)
            with cl.profile() as prof:
                (y * torch.arange(6.0)).sum().backward()
            return prof

    prof = run_parties(body, 2)[0]
    # threshold_backward is a product of a public gradient and the stashed mask: local.
    assert prof.rows["aten.threshold_backward"].rounds == 0
    assert "aten.gt.Scalar" not in prof.rows


def test_in_place_on_a_saved_tensor_is_caught_by_autograd(run_parties):
    def body(party):
        with cl.use_party(party):
            xe = cl.cryptensor(torch.ones(3), requires_grad=True)
            y = xe * 2
            z = y * y
            y.add_(1.0)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                z.sum().backward()
            return True

    assert run_parties(body, 2) == [True, True]
