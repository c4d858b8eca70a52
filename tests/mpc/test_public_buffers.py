"""encrypt_module's public tensors (issue 11): non-persistent buffers public by default, chosen
parameters/buffers public by name or predicate, src's values broadcast, invalid weights fail
on every party. Plain torch is the oracle; 2 and 3 parties as threads."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import crypten_lite as cl
from crypten_lite.errors import ConfigurationError, EncodingError

ULP = 2.0**-16


def on_parties(
    run_parties: Callable[..., list[Any]], n: int, fn: Callable[[Any], Any]
) -> list[Any]:
    def body(party: Any) -> Any:
        with cl.use_party(party):
            return fn(party)

    return run_parties(body, n)


class Scaled(nn.Module):
    """A linear layer, a learned-looking persistent buffer and a config-derived one."""

    def __init__(self, scale: float = 0.5) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("shift", torch.full((2,), 0.25))
        self.register_buffer("scale", torch.full((2,), scale), persistent=False)
        self.register_buffer("steps", torch.tensor(7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale + self.shift


def test_default_keeps_nonpersistent_buffers_public_with_src_values(
    run_parties, world_size
) -> None:
    torch.manual_seed(3)
    owner = Scaled(scale=0.5)
    x = torch.randn(4, 3)
    want = owner(x).detach()

    def fn(party: Any) -> Any:
        # Only src's values count: the other parties built theirs with another scale.
        m = copy.deepcopy(owner) if party.rank == 0 else Scaled(scale=9.0)
        rounds = party.comm.stats.total.rounds
        cl.encrypt_module(m, src=0)
        rounds = party.comm.stats.total.rounds - rounds
        kinds = {n: cl.is_encrypted(t) for n, t in [*m.named_parameters(), *m.named_buffers()]}
        return kinds, m.scale.clone(), rounds, m(cl.cryptensor(x)).get_plain_text()

    for kinds, scale, rounds, out in on_parties(run_parties, world_size, fn):
        assert kinds == {
            "lin.weight": True,
            "lin.bias": True,
            "shift": True,
            "scale": False,
            "steps": False,
        }
        assert torch.equal(scale, torch.full((2,), 0.5)) and rounds == 1
        torch.testing.assert_close(out, want, atol=16 * ULP, rtol=0)


@pytest.mark.parametrize(
    "public",
    [["lin.bias", "shift"], lambda name, t: name in ("lin.bias", "shift")],
    ids=["names", "predicate"],
)
def test_chosen_tensors_stay_public(run_parties, world_size, public) -> None:
    torch.manual_seed(4)
    owner = Scaled()
    x = torch.randn(2, 3)
    want = owner(x).detach()

    def fn(party: Any) -> Any:
        m = copy.deepcopy(owner) if party.rank == 0 else Scaled()
        cl.encrypt_module(m, src=0, public=public, nonpersistent_public=False)
        kinds = {n: cl.is_encrypted(t) for n, t in [*m.named_parameters(), *m.named_buffers()]}
        return (
            kinds,
            m.lin.bias.detach().clone(),
            isinstance(m.lin.bias, nn.Parameter),
            m(cl.cryptensor(x)).get_plain_text(),
        )

    for kinds, bias, is_param, out in on_parties(run_parties, world_size, fn):
        assert kinds == {
            "lin.weight": True,
            "lin.bias": False,
            "shift": False,
            "scale": True,
            "steps": False,
        }
        assert is_param and torch.equal(bias, owner.lin.bias.detach())
        torch.testing.assert_close(out, want, atol=16 * ULP, rtol=0)


def test_tied_weights_stay_tied_and_a_public_alias_keeps_both_public(run_parties) -> None:
    emb = nn.Embedding(5, 4)
    head = nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    model = nn.Sequential(emb, head)

    def fn(party: Any) -> Any:
        secret = cl.encrypt_module(copy.deepcopy(model))
        public = cl.encrypt_module(copy.deepcopy(model), public=["1.weight"])
        return (
            secret[0].weight is secret[1].weight and cl.is_encrypted(secret[0].weight),
            public[0].weight is public[1].weight and not cl.is_encrypted(public[0].weight),
        )

    for tied_secret, tied_public in on_parties(run_parties, 2, fn):
        assert tied_secret and tied_public


def test_unknown_public_name_fails_on_every_party_before_any_message(run_parties) -> None:
    def fn(party: Any) -> Any:
        sent = party.comm.stats.total.messages_sent
        try:
            cl.encrypt_module(Scaled(), public=["lin.wieght"])
        except ConfigurationError as exc:
            return str(exc), party.comm.stats.total.messages_sent - sent
        return "no error", None

    for rank, (message, sent) in enumerate(on_parties(run_parties, 3, fn)):
        assert message.startswith(f"party {rank}: ") and "lin.wieght" in message and sent == 0


def test_unencodable_weights_fail_on_every_party(run_parties, world_size) -> None:
    def fn(party: Any) -> Any:
        m = Scaled()
        if party.rank == 0:
            with torch.no_grad():
                m.lin.weight[0, 0] = float("nan")
        try:
            cl.encrypt_module(m)
        except EncodingError as exc:
            error = str(exc)
        else:
            error = "no error"
        return error, cl.is_encrypted(m.lin.bias), cl.cryptensor(torch.ones(1)).get_plain_text()

    for rank, (error, encrypted, after) in enumerate(on_parties(run_parties, world_size, fn)):
        # every party names the tensor: the architecture is the same everywhere
        assert error.startswith(
            f"party {rank}: encrypt_module: party 0's `lin.weight` cannot be encoded"
        ), error
        assert not encrypted and torch.equal(after, torch.ones(1))


# --------------------------------------------------------------- LLaMA's rotary frequencies


def test_llama_rotary_frequencies_stay_public_and_cost_no_rounds(run_parties, world_size) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    model = transformers.LlamaModel(config).eval()
    embeds = torch.randn(1, 5, 16)
    positions = torch.arange(5).unsqueeze(0)
    with torch.no_grad():
        want = model(inputs_embeds=embeds).last_hidden_state
        cos_want, sin_want = model.rotary_emb(embeds, positions)

    def fn(party: Any) -> Any:
        m = cl.encrypt_module(copy.deepcopy(model))
        x = cl.cryptensor(embeds)
        before = party.comm.stats.total.rounds
        with torch.no_grad():
            cos, sin = m.rotary_emb(x, positions)
        rotary_rounds = party.comm.stats.total.rounds - before
        with torch.no_grad():
            out = m(inputs_embeds=x).last_hidden_state
        return m.rotary_emb.inv_freq, cos, sin, rotary_rounds, out.get_plain_text()

    for inv_freq, cos, sin, rounds, out in on_parties(run_parties, world_size, fn):
        assert not cl.is_encrypted(inv_freq) and torch.equal(inv_freq, model.rotary_emb.inv_freq)
        assert rounds == 0 and not cl.is_encrypted(cos) and not cl.is_encrypted(sin)
        torch.testing.assert_close(cos, cos_want) and torch.testing.assert_close(sin, sin_want)
        # RMSNorm (rsqrt), attention softmax and SiLU: a few 1e-4 of absolute error at f=16.
        torch.testing.assert_close(out, want, atol=2e-3, rtol=0)
