"""Numerics over the whole range: the normalising functions (rsqrt, sqrt, log, reciprocal,
division, powers) swept over input magnitudes ``2**-16 .. 2**44`` and the normalisation layers
(LayerNorm, BatchNorm, RMSNorm, ``F.normalize``) over standard deviations ``1e-3 .. 1e4`` with
``eps`` below one ulp, for 2 and 3 parties, against plaintext torch in float64 on the
fixed-point-rounded inputs (what the parties actually hold).

Each result is within its documented error (docstrings of ``protocols.elementary`` and
``protocols.moments``) or at its documented saturation. A one-step SGD of a small BatchNorm
ResNet at batch 2 checks the training path; ResNet-18 at batch 2 checks every BatchNorm.
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
from crypten_lite.protocols import approximations as A
from crypten_lite.protocols.moments import standardize_domain
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.encoding import decode
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
ULP = 2.0**-16
GEN = torch.Generator().manual_seed(10)


def q(x: torch.Tensor, f: int = 16) -> torch.Tensor:
    """The fixed-point value the parties hold (``f`` fractional bits), as float64."""
    return torch.round(x.double() * 2**f) / 2**f


def mags(lo: float = -16, hi: float = 44, step: float = 0.25) -> torch.Tensor:
    return 2.0 ** torch.arange(lo, hi, step, dtype=torch.float64)


def run_protocols(run_parties: Run, n: int, x: torch.Tensor, fns: dict[str, Any]) -> dict:
    """Each ``fns[name](share, party)`` on ``x`` shared by party 0, opened, decoded."""

    def body(party: Party) -> dict[str, torch.Tensor]:
        sh = share(x if party.rank == 0 else None, 0, party, shape=x.shape)
        outs = {k: f(sh, party) for k, f in fns.items()}
        got = open_shares(list(outs.values()), party)
        assert got is not None
        return {k: decode(v, 16, torch.float64) for k, v in zip(outs, got, strict=True)}

    return run_parties(body, n)[0]  # type: ignore[no-any-return]


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, rel: float, ulps: float):
    err = (got - ref).abs()
    bound = rel * ref.abs() + ulps * ULP
    bad = err > bound
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} outside {rel:g} rel + {ulps} ulp, e.g. "
        f"ref={ref[bad][:3].tolist()} got={got[bad][:3].tolist()}"
    )


# --------------------------------------------------------------------------- elementary


def test_roots_and_log_whole_range(run_parties: Run, world_size: int) -> None:
    """``inv_sqrt``, ``sqrt``, ``log`` on ``[2**-16, 2**44)``; saturation at and above."""
    x = torch.cat([mags(), 2.0 ** torch.tensor([44.0, 45.0, 46.0]), torch.zeros(1)])
    got = run_protocols(
        run_parties,
        world_size,
        x,
        {"inv_sqrt": A.inv_sqrt, "sqrt": A.sqrt, "log": A.log},
    )
    xq = q(x)
    dom = (xq >= 2**-16) & (xq < 2**44)
    assert_close("inv_sqrt", got["inv_sqrt"][dom], xq[dom] ** -0.5, 1e-4, 2)
    assert_close("sqrt", got["sqrt"][dom], xq[dom].sqrt(), 2e-4, 2)
    assert_close("log", got["log"][dom], xq[dom].log(), 0, 1e-4 / ULP)
    # documented saturation: rsqrt(>= 2**44) = 0 (true value below 2**-22), sqrt = 2**22,
    # log = ln(2**44); x = 0: rsqrt = 2**8, sqrt = 0, log = -(f + 1) ln 2
    big = xq >= 2**44
    assert (got["inv_sqrt"][big] == 0).all()
    assert_close("sqrt_sat", got["sqrt"][big], torch.full_like(xq[big], 2.0**22), 1e-3, 0)
    assert_close(
        "log_sat", got["log"][big], torch.full_like(xq[big], 44 * 0.6931471805599453), 0, 8
    )
    zero = xq == 0
    assert abs(got["inv_sqrt"][zero].item() - 256) < 0.01 and got["sqrt"][zero].item() == 0
    assert abs(got["log"][zero].item() + 17 * 0.6931471805599453) < 1e-3


def test_reciprocal_and_div_whole_range(run_parties: Run, world_size: int) -> None:
    """``1/y`` within 2 ulps + relative 2e-4 (0 beyond ``2**16``), and ``x / y`` with the
    relative precision of the quotient for ``|y|`` in ``[2**-16, 2**44)``."""
    m = mags(-16, 44, 0.5)
    y = torch.cat([m, -m])
    x = (torch.rand(y.shape, generator=GEN, dtype=torch.float64) * 2 - 1) * 3
    x = x * y.abs().clamp(max=2.0**20)  # quotients up to about 3
    x2 = torch.rand(y.shape, generator=GEN, dtype=torch.float64) * 100 + 1  # quotients 1/y
    xq, yq, x2q = q(x), q(y), q(x2)

    def body(party: Party) -> dict[str, torch.Tensor]:
        sx = share(x if party.rank == 0 else None, 0, party, shape=x.shape)
        sx2 = share(x2 if party.rank == 0 else None, 0, party, shape=x.shape)
        sy = share(y if party.rank == 0 else None, 0, party, shape=y.shape)
        outs = [A.reciprocal(sy, party), A.div(sx, sy, party), A.div(sx2, sy, party)]
        got = open_shares(outs, party)
        assert got is not None
        return {k: decode(v, 16, torch.float64) for k, v in zip(["r", "d", "d2"], got, strict=True)}

    got = run_parties(body, world_size)[0]
    assert_close("reciprocal", got["r"], 1 / yq, 2e-4, 2)
    assert_close("div", got["d"], xq / yq, 1e-4, 3)
    assert_close("div_small", got["d2"], x2q / yq, 1e-4, 3)


POW_EXPONENTS = [-3, -2, -1.5, -0.5, 0.5, 1.5, -2.5, 0.3, -1.7, 2.7, -6.5]


def test_pow_negative_fractional(run_parties: Run, world_size: int) -> None:
    """``x**p`` within ``1e-4`` relative + 2 ulps where ``|x**p| <= 2**30``, else saturated in
    ``[2**30, 2**(30 + |p|)]``; ``0.01**-3 = 1e6``."""
    x = torch.cat([mags(-16, 44, 0.5), -mags(-12, 20, 2.0), torch.tensor([0.01, 0.1, 1e-3])])
    fns = {str(p): (lambda s, party, p=p: A.pow(s, p, party)) for p in POW_EXPONENTS}
    got = run_protocols(run_parties, world_size, x, fns)
    xq = q(x)
    for p in POW_EXPONENTS:
        ref = xq**p
        g = got[str(p)]
        real = ~ref.isnan()
        k = 1 << max(0, int(torch.tensor(abs(p) / 4).log2().ceil().item()))
        limit = 2.0**30 if k == 1 else 2.0 ** (30 - abs(p))
        dom = real & (ref.abs() <= limit) & (xq.abs() >= 2**-16) & (xq.abs() < 2**44)
        assert_close(f"pow {p}", g[dom], ref[dom], 1e-4 * k, 2)
        sat = real & (ref.abs() > limit)
        assert (g[sat].abs() >= limit * 0.999).all(), p
        assert (g[sat].abs() <= 2 ** (30 + abs(p) * (k == 1)) * 1.001).all(), p
    assert abs(got["-3"][-3].item() / q(torch.tensor(0.01)).item() ** -3 - 1) < 1e-4


def test_pow_exponent_out_of_range_raises(run_parties: Run) -> None:
    def body(party: Party) -> str:
        sh = share(torch.ones(3) if party.rank == 0 else None, 0, party, shape=(3,))
        with pytest.raises(ValueError, match="exponent"):
            A.pow(sh, -17.5, party)
        return "raised"

    assert run_parties(body, 2) == ["raised", "raised"]


# --------------------------------------------------------------------------- layer norm

STDS = [1e-3, 1e-2, 1.0, 1e2, 1e3, 1e4]


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_layer_norm_768_over_std_range(run_parties: Run, world_size: int, eps: float) -> None:
    """``F.layer_norm`` over 768 features: within ``1e-3`` of torch (the output's scale is 1)
    for standard deviations ``1e-3 .. 1e4`` (and an offset of 3 standard deviations), with
    the returned mean and rstd to their fixed-point resolution."""
    x = torch.cat([torch.randn(1, 768, generator=GEN) * s + 3 * s for s in STDS])
    w = torch.rand(768, generator=GEN) + 0.5
    b = torch.randn(768, generator=GEN)

    def body(party: Party) -> list[torch.Tensor]:
        with cl.use_party(party):
            xe = cl.cryptensor(x)
            out, mean, rstd = torch.ops.aten.native_layer_norm(xe, (768,), None, None, eps)
            affine = F.layer_norm(xe, (768,), cl.cryptensor(w), cl.cryptensor(b), eps)
            return [t.get_plain_text().double() for t in (out, mean, rstd, affine)]

    out, mean, rstd, affine = run_parties(body, world_size)[0]
    ref, rmean, rrstd = torch.ops.aten.native_layer_norm(q(x), (768,), None, None, eps)
    assert (out - ref).abs().max() < 1e-3
    assert (mean - rmean).abs().max() < 1e-7 * rmean.abs().max() + 4 * ULP
    assert_close("rstd", rstd, rrstd, 1e-4, 2)
    ref_aff = F.layer_norm(q(x), (768,), q(w), q(b), eps)
    assert (affine - ref_aff).abs().max() < 2e-3


def test_layer_norm_fused_affine(run_parties: Run, world_size: int) -> None:
    """``F.layer_norm`` with a weight (secret or public) multiplies it inside the
    standardisation with exact truncation: 13 rounds with or without the affine (2 parties;
    16 before), output within ``2e-3`` of torch; with autograd, the input and weight
    gradients through the stashed ``x_hat`` within ``1e-3`` relative."""
    x = torch.cat([torch.randn(1, 768, generator=GEN) * s + s for s in (1e-2, 1.0, 1e2, 1e3)])
    w = torch.rand(768, generator=GEN) * 4 - 2
    b = torch.randn(768, generator=GEN)
    proj = torch.randn(4, 768, generator=GEN)

    def body(party: Party) -> list[Any]:
        with cl.use_party(party):
            xe, we, be = cl.cryptensor(x), cl.cryptensor(w), cl.cryptensor(b)
            rounds = []
            outs = []
            for weight in (we, w):
                party.comm.stats.reset()
                with torch.no_grad():
                    out = F.layer_norm(xe, (768,), weight, be, 1e-5)
                rounds.append(party.comm.stats.total.rounds)
                outs.append(out.get_plain_text().double())
            xg = cl.cryptensor(x, requires_grad=True)
            wg = cl.cryptensor(w, requires_grad=True)
            (F.layer_norm(xg, (768,), wg, be, 1e-5) * proj).sum().backward()
            return [rounds, outs, xg.grad.get_plain_text(), wg.grad.get_plain_text()]

    rounds, outs, gx, gw = run_parties(body, world_size)[0]
    xq, wq = q(x).requires_grad_(), q(w).requires_grad_()
    ref = F.layer_norm(xq, (768,), wq, q(b), 1e-5)
    (ref * proj.double()).sum().backward()
    if world_size == 2:
        assert rounds == [13, 13]
    for out in outs:
        assert (out - ref.detach()).abs().max() < 2e-3
    assert xq.grad is not None and wq.grad is not None
    assert ((gx - xq.grad).abs() <= 1e-3 * xq.grad.abs().amax(1, keepdim=True) + 8 * ULP).all()
    assert (gw - wq.grad).abs().max() <= 1e-3 * wq.grad.abs().max()


def test_standardize_domain_and_saturation(run_parties: Run) -> None:
    """Constant rows give 0 as in torch; rows below the domain saturate to a finite rstd
    (not garbage); the documented domain for 768 features covers std 1e-3 .. 1e4."""
    lo, hi = standardize_domain(768)
    assert lo < 1e-6 and hi > 1e8
    x = torch.cat([torch.full((1, 768), 5.0), torch.randn(1, 768, generator=GEN) * 1e-5])

    def body(party: Party) -> list[torch.Tensor]:
        with cl.use_party(party):
            out, _, rstd = torch.ops.aten.native_layer_norm(
                cl.cryptensor(x), (768,), None, None, 1e-12
            )
            return [out.get_plain_text(), rstd.get_plain_text()]

    out, rstd = run_parties(body, 2)[0]
    assert (out[0] == 0).all()
    assert torch.isfinite(rstd).all() and (rstd <= 2 / lo**0.5 * 1.01).all()
    assert (out[1].abs() <= 3).all()  # saturated: x_hat shrinks, never blows up


# --------------------------------------------------------------------------- batch norm


@pytest.mark.parametrize("batch", [2, 8])
def test_batch_norm2d_train_and_eval(run_parties: Run, world_size: int, batch: int) -> None:
    """``BatchNorm2d`` (eps 1e-5) in train mode at batch 2 and 8 (channels with standard
    deviations 1e-3 .. 1e2, including a 1x1 spatial map: 2 values per channel) and in eval
    mode with the updated running statistics: outputs within 1e-2 of torch."""
    c = 5
    scales = torch.tensor([1e-3, 1e-2, 1.0, 10.0, 100.0]).view(1, c, 1, 1)
    x = torch.randn(batch, c, 4, 4, generator=GEN) * scales + scales
    x1 = torch.randn(batch, c, 1, 1, generator=GEN) * scales
    torch.manual_seed(0)
    bn, bn1 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

    def body(party: Party) -> list[torch.Tensor]:
        with cl.use_party(party):
            m, m1 = cl.encrypt_module(copy.deepcopy(bn)), cl.encrypt_module(copy.deepcopy(bn1))
            out = m(cl.cryptensor(x))
            out1 = m1(cl.cryptensor(x1))
            m.eval()
            ev = m(cl.cryptensor(x))
            return [t.get_plain_text() for t in (out, out1, ev, m.running_var, m.running_mean)]

    out, out1, ev, rv, rm = run_parties(body, world_size)[0]
    ref_bn, ref_bn1 = copy.deepcopy(bn).double(), copy.deepcopy(bn1).double()
    ref = ref_bn(q(x))
    ref1 = ref_bn1(q(x1))
    ref_bn.eval()
    ref_ev = ref_bn(q(x))
    assert (out - ref).abs().max() < 1e-2
    assert (out1 - ref1).abs().max() < 1e-2
    assert (rm - ref_bn.running_mean).abs().max() < 1e-3
    assert ((rv - ref_bn.running_var).abs() <= 1e-3 * ref_bn.running_var + 4 * ULP).all()
    # eval mode: running var + eps at scale f (eps 1e-5 is one ulp); channels whose running
    # variance is at least 1e-2 are within 1e-2
    ok = (ref_bn.running_var >= 1e-2).view(1, c, 1, 1).expand_as(ev)
    assert (ev - ref_ev)[ok].abs().max() < 1e-2


def test_rms_norm_and_normalize(run_parties: Run, world_size: int) -> None:
    """``F.rms_norm`` (forward, input gradient) and ``F.normalize`` over RMS 1e-3 .. 1e3."""
    x = torch.cat([torch.randn(2, 64, generator=GEN) * s for s in (1e-3, 1.0, 1e3)])
    w = torch.rand(64, generator=GEN) + 0.5
    proj = torch.randn(6, 64, generator=GEN)

    def body(party: Party) -> list[torch.Tensor]:
        with cl.use_party(party):
            xe = cl.cryptensor(x, requires_grad=True)
            out = F.rms_norm(xe, (64,), cl.cryptensor(w), 1e-6)
            (out * proj).sum().backward()
            nrm = F.normalize(cl.cryptensor(x), dim=1)
            return [out.get_plain_text(), xe.grad.get_plain_text(), nrm.get_plain_text()]

    out, gx, nrm = run_parties(body, world_size)[0]
    xq = q(x).requires_grad_()
    ref = F.rms_norm(xq, (64,), q(w), 1e-6)
    (ref * proj.double()).sum().backward()
    assert (out - ref.detach()).abs().max() < 1e-3
    assert xq.grad is not None
    # the gradient is rstd (1/rms) times O(1): its fixed-point resolution is one ulp
    assert ((gx - xq.grad).abs() <= 1e-3 * xq.grad.abs().amax(1, keepdim=True) + 8 * ULP).all()
    assert (nrm - F.normalize(q(x), dim=1)).abs().max() < 1e-4


# --------------------------------------------------------------------------- ResNet step


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.down(x))


class ResNet(nn.Module):
    """torchvision-style BasicBlock ResNet (7x7 stem, max pool, 4 stages); ``blocks =
    (2, 2, 2, 2)`` and ``width = 64`` is ResNet-18."""

    def __init__(self, blocks: tuple[int, ...], width: int, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers: list[nn.Module] = []
        cin = width
        for i, nb in enumerate(blocks):
            cout = width * 2**i
            for j in range(nb):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)
        # BatchNorm affine parameters as after some training: with the initial (1, 0) and 2
        # values per channel every BatchNorm output is exactly +-1, so the residual sums hit
        # ReLU's kink at exactly 0 and the step depends on a tie (in any arithmetic)
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm2d):
                nn.init.uniform_(mod.weight, 0.5, 1.5)
                nn.init.normal_(mod.bias, 0.0, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def sgd_step_gaps(
    run_parties: Run,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float = 0.1,
    frac_bits: int = 16,
) -> tuple[float, float, float]:
    """One SGD step (cross-entropy, train mode) encrypted and in float64: (loss gap, largest
    weight gap, largest weight gap relative to the largest update of the same tensor)."""
    onehot = F.one_hot(y, 10).float()

    def body(party: Party) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(model).train())
            opt = torch.optim.SGD(m.parameters(), lr=lr)
            out = m(cl.cryptensor(x))
            loss = -(F.log_softmax(out, 1) * cl.cryptensor(onehot)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss.get_plain_text(), {k: p.get_plain_text() for k, p in m.named_parameters()}

    loss, got = run_parties(body, 2, frac_bits=frac_bits)[0]
    ref = copy.deepcopy(model).double().train()
    with torch.no_grad():  # the weights the parties hold: encoded at frac_bits
        for p in ref.parameters():
            p.copy_(q(p, frac_bits))
    before = {k: p.detach().clone() for k, p in ref.named_parameters()}
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    ref_loss = F.cross_entropy(ref(q(x, frac_bits)), y)
    opt.zero_grad()
    ref_loss.backward()
    opt.step()
    gaps = {k: float((got[k] - p.detach()).abs().max()) for k, p in ref.named_parameters()}
    upd = {k: float((p.detach() - before[k]).abs().max()) for k, p in ref.named_parameters()}
    rel = max(gaps[k] / max(upd[k], 1e-12) for k in gaps)
    return abs(float(loss) - float(ref_loss.detach())), max(gaps.values()), rel


@pytest.mark.parametrize("frac_bits", [16, 20])
def test_small_resnet_sgd_step_batch2(run_parties: Run, frac_bits: int) -> None:
    """One SGD step of a narrow BatchNorm ResNet (blocks 1,1,1,1, width 8) at batch 2 on
    2x3x32x32, BatchNorm over 2 values per channel in the last stage (1x1 maps), against
    the float64 step from the weights and input the parties hold (encoded at ``f`` bits).

    Largest weight gap, measured over repeated runs (the dealer's masks change the exact
    truncations' last bit): ``f = 16`` 4e-3 .. 5.7e-2 (6.4e-2 before x_hat kept 20 bits of
    the row's rms; 23 % of the update before the full-range standardisation), ``f = 20``
    2e-3 .. 3e-3, ``f = 22`` 5e-4 .. 4e-3, ``f = 24`` 2e-3: the floor above ``f = 20`` is
    the approximations' fixed relative errors (the standardisation's ``1.1e-5``): in float64,
    a relative error of ``1e-5`` on every BatchNorm output and input gradient alone moves
    this step by ``5e-3``, since BatchNorm over two values divides their difference by
    ``sqrt(var + eps)`` and amplifies any rounding up to ``1/sqrt(eps)`` times."""
    torch.manual_seed(1)
    model = ResNet((1, 1, 1, 1), 8)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([3, 7])
    loss_gap, gap, rel = sgd_step_gaps(run_parties, model, x, y, frac_bits=frac_bits)
    if frac_bits == 20:
        assert loss_gap < 1e-4 and gap < 1e-2 and rel < 0.03, (loss_gap, gap, rel)
    else:
        assert loss_gap < 1e-3 and gap < 0.1 and rel < 0.2, (loss_gap, gap, rel)


@pytest.mark.slow
def test_resnet18_batch2_step_is_ill_conditioned() -> None:
    """Why the full ResNet-18 step at batch 2 is not held to ``1e-3`` (plaintext only): its
    last stage normalises 2 values per channel, and the step amplifies a perturbation of the
    weights about ``1e8`` times. float32 PyTorch itself lands ``38`` away from the float64
    step; rounding the weights to ``2**-32`` moves it by ``9e-3``, to ``2**-16`` by ``50``
    (the encrypted step at ``f = 16``: ``87``, loss within ``6e-2``)."""
    torch.manual_seed(1)
    model = ResNet((2, 2, 2, 2), 64)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([3, 7])

    def step(dtype: torch.dtype) -> dict[str, torch.Tensor]:
        m = copy.deepcopy(model).to(dtype).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        F.cross_entropy(m(q(x).to(dtype)), y).backward()
        opt.step()
        return {k: p.detach().double() for k, p in m.named_parameters()}

    ref, f32 = step(torch.float64), step(torch.float32)
    assert max(float((f32[k] - ref[k]).abs().max()) for k in ref) > 1.0


@pytest.mark.slow
def test_resnet18_batchnorm_batch2(run_parties: Run) -> None:
    """ResNet-18, CIFAR input 2x3x32x32, train mode at batch 2 (forward only, about 10 s).

    Every BatchNorm is within ``1e-3`` of torch's BatchNorm applied to the same (encrypted
    network's) input: measured ``2.5e-4`` at most, including the last stage's 1x1 maps (2
    values per channel). The network's output is not: BatchNorm over 2 values outputs
    ``+-gamma (x1 - x2) / sqrt((x1 - x2)**2 + 4 eps) + beta``, so channels whose two values
    are close amplify the upstream fixed-point error (``2e-3`` after 14 convolutions) up to
    ``1/sqrt(eps)`` times: measured output error 0.23 (0.34 before the full-range
    standardisation), and the SGD step's weights are off by as much as their update. That is
    the precision of ``f = 16`` activations, not of the normalisation."""
    torch.manual_seed(1)
    model = ResNet((2, 2, 2, 2), 64)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]

    def body(party: Party) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        with cl.use_party(party):
            m = cl.encrypt_module(copy.deepcopy(model).train())
            rec: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for name, mod in m.named_modules():
                if name in bns:
                    mod.register_forward_hook(
                        lambda _m, i, o, name=name: rec.__setitem__(
                            name, (i[0].get_plain_text(), o.get_plain_text())
                        )
                    )
            with torch.no_grad():
                m(cl.cryptensor(x))
            return rec

    rec = run_parties(body, 2)[0]
    mods = dict(model.named_modules())
    worst = 0.0
    for name in bns:
        inp, out = rec[name]
        bn = mods[name]
        assert isinstance(bn, nn.BatchNorm2d)
        ref = F.batch_norm(
            inp.double(),
            None,
            None,
            bn.weight.detach().double(),
            bn.bias.detach().double(),
            True,
            0.1,
            bn.eps,
        )
        worst = max(worst, float((out - ref).abs().max()))
    print(f"ResNet-18 batch 2: largest BatchNorm error {worst:.2e}")
    assert worst < 1e-3
