"""check_model's domain report: one plaintext run on the example input lists, per module and op,
every place that leaves a documented domain (protocols/domains.py) or the ring's headroom."""

from __future__ import annotations

import torch
from torch import nn

import crypten_lite as cl
from crypten_lite.protocols.domains import DOMAINS, RING, local_truncation_failure

GEN = torch.Generator().manual_seed(7)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


class Block(nn.Module):
    """Linear -> LayerNorm -> Linear -> exp, named like a transformer's sub-modules."""

    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(16, 16)
        self.norm = nn.LayerNorm(16, eps=eps)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x))).sigmoid()


class Encoder(nn.Module):
    def __init__(self, eps: float = 1e-3) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Block(eps), Block(eps)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer[1](torch.cat([self.layer[0](x)] * 4, -1))


def lines(report: cl.CheckReport) -> list[str]:
    return [str(d) for d in report.domain]


def test_a_tame_model_reports_nothing() -> None:
    report = cl.check_model(Encoder(), randn(8, 16), backward=False)
    assert report.ok and report.numerics_ok, str(report)
    assert "outside a documented domain" not in str(report)


def test_layer_norm_on_large_inputs_names_the_module_and_the_std() -> None:
    model = Encoder()
    with torch.no_grad():
        model.layer[0].fc1.weight.mul_(1e4)  # inputs of layer.0.norm: std near 2e3..1e4
    report = cl.check_model(model, randn(8, 16), backward=False)
    hits = [d for d in report.domain if d.op == "layer_norm"]
    assert len(hits) == 1, lines(report)
    assert hits[0].module == "layer.0.norm" and hits[0].kind == "LayerNorm"
    assert "input std up to" in hits[0].detail and "inv_sqrt" in hits[0].detail
    std = model.layer[0].fc1(randn(8, 16)).std(-1, unbiased=False).max().item()
    assert std > 1e3  # the layer really is out of the domain (std below 2**10)


def test_small_eps_and_small_variance_are_reported() -> None:
    report = cl.check_model(nn.Sequential(nn.LayerNorm(8)), randn(4, 8) * 1e-4, backward=False)
    text = lines(report)
    assert any("eps 1e-05" in t and "encodes as 0" in t for t in text), text
    assert any("input std down to" in t for t in text), text
    # Train mode: the batch variance (batch 2, nearly equal rows); eval: the running variance.
    bn = nn.BatchNorm1d(3).train()
    report = cl.check_model(bn, torch.ones(2, 3) + 1e-6 * randn(2, 3), backward=False)
    assert {d.op for d in report.domain} == {"batch_norm"}, lines(report)
    assert any("input std down to" in t for t in lines(report)), lines(report)
    bn = nn.BatchNorm1d(3, eps=1e-3).eval()
    assert cl.check_model(bn, randn(2, 3), backward=False).numerics_ok
    bn.running_var.fill_(1e7)  # std 3.2e3, beyond the domain whatever the input
    report = cl.check_model(bn, randn(2, 3), backward=False)
    assert any("input std up to 3.16e+03" in t for t in lines(report)), lines(report)


def test_products_beyond_the_headroom_and_exp_above_its_domain() -> None:
    model = Encoder()
    with torch.no_grad():
        model.layer[1].fc2.weight.mul_(2.0**36)  # fc2 products reach about 2**40 (real)
    x = randn(8, 16)
    report = cl.check_model(model, x, backward=False)
    prods = [d for d in report.domain if "products reach" in d.detail]
    assert [(d.module, d.op) for d in prods] == [("layer.1.fc2", "addmm")], lines(report)
    assert f"|x * y| < 2**{int(torch.log2(torch.tensor(RING.product_limit(16))))}" in (
        prods[0].detail
    )

    class Exp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * 3).exp()

    report = cl.check_model(Exp(), torch.linspace(0, 4, 9), backward=False)
    exps = [d for d in report.domain if d.op == "exp"]
    assert len(exps) == 1 and "exp arguments up to 12" in exps[0].detail, lines(report)
    assert DOMAINS["exp"].describe() in exps[0].detail


def test_values_beyond_the_fixed_point_range_and_reciprocal_domain() -> None:
    class Div(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (1 / x) + x.rsqrt()

    report = cl.check_model(Div(), torch.tensor([1e-7, 0.5, 3e6]), backward=False)
    ops = {d.op for d in report.domain}
    assert {"reciprocal", "inv_sqrt"} <= ops or {"div", "inv_sqrt"} <= ops, lines(report)
    report = cl.check_model(nn.Identity(), torch.tensor([1e15]), backward=False)
    assert any("beyond the fixed-point range" in t for t in lines(report)), lines(report)


def test_local_truncation_failures_are_listed_only_for_local() -> None:
    lin = nn.Linear(64, 64)
    with torch.no_grad():
        lin.weight.fill_(8.0)
    x = torch.full((64, 64), 64.0)  # every product 2**18 real: 2**50 at scale 2**32
    expected = local_truncation_failure(lin(x), 16)
    assert expected > 1e-6
    local = cl.check_model(lin, x, backward=False, truncation="local")
    hit = [d for d in local.domain if "local truncation fails" in d.detail]
    assert len(hit) == 1 and hit[0].module == "(top level)", lines(local)
    assert f"{expected:.2g} expected failures" in hit[0].detail
    exact = cl.check_model(lin, x, backward=False, truncation="dealer")
    assert exact.numerics_ok, lines(exact)


def test_softmax_rows_longer_than_documented_fused_attention_included() -> None:
    class Attn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(x, x, x)

    report = cl.check_model(Attn(), randn(1, 2, 16, 8), backward=False)
    rows = [d for d in report.domain if d.op == "softmax"]
    assert len(rows) == 1 and "rows of 16 elements" in rows[0].detail, lines(report)
    short = cl.check_model(Attn(), randn(1, 2, 8, 8), backward=False)
    assert short.numerics_ok, lines(short)


def test_attention_masks_are_not_values_to_encode() -> None:
    class Masked(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mask = torch.zeros(4, 4)
            mask[:, -1] = torch.finfo(torch.float32).min
            return (x @ x.T + mask).softmax(-1)

    assert cl.check_model(Masked(), randn(4, 3), backward=False).numerics_ok
