"""crypten_lite.generate (issue 11): greedy generation matches HuggingFace's generate() on the
same (tiny, random) GPT-2; sampling follows softmax(logits / T); each reveal mode opens only
what it says. 2 and 3 parties as threads."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

import crypten_lite as cl
from crypten_lite.errors import ConfigurationError
from crypten_lite.generation import _sample

transformers = pytest.importorskip("transformers")
NEW = 4


def on_parties(
    run_parties: Callable[..., list[Any]], n: int, fn: Callable[[Any], Any]
) -> list[Any]:
    def body(party: Any) -> Any:
        with cl.use_party(party):
            return fn(party)

    return run_parties(body, n)


@pytest.fixture(scope="module")
def gpt2() -> tuple[Any, torch.Tensor, torch.Tensor]:
    """A random 1-layer GPT-2 over 40 tokens, a prompt, and HF's greedy continuation."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=40,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    prompt = torch.tensor([[3, 7, 1], [5, 2, 9]])
    with torch.no_grad():
        want = model.generate(prompt, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return model, prompt, want[:, prompt.shape[1] :]


def test_greedy_matches_huggingface_for_every_reveal_mode(run_parties, world_size, gpt2) -> None:
    model, prompt, want = gpt2

    def fn(party: Any) -> Any:
        m = cl.encrypt_module(copy.deepcopy(model))
        end = cl.generate(m, prompt, max_new_tokens=NEW)
        each = cl.generate(m, prompt, max_new_tokens=NEW, reveal="each", dst=1)
        opened = party.comm.stats.by_tag["get_plain_text"].messages_sent
        none = cl.generate(m, prompt, max_new_tokens=NEW, reveal="none")
        opened = party.comm.stats.by_tag["get_plain_text"].messages_sent - opened
        return end.tokens, each.tokens, none.tokens, none.onehot.get_plain_text(), opened

    results = on_parties(run_parties, world_size, fn)
    for rank, (end, each, none, onehot, opened) in enumerate(results):
        assert torch.equal(end, want)
        assert (each is None) == (rank != 1) and (each is None or torch.equal(each, want))
        assert none is None and opened == 0  # reveal="none" opens nothing
        assert torch.equal(onehot.argmax(-1), want)
        assert torch.allclose(onehot.sum(-1), torch.ones_like(want, dtype=torch.float32))


def test_private_prompt_as_encrypted_embeddings(run_parties, gpt2) -> None:
    model, prompt, want = gpt2
    embeds = model.get_input_embeddings()(prompt).detach()

    def fn(party: Any) -> Any:
        m = cl.encrypt_module(copy.deepcopy(model))
        x = cl.cryptensor(embeds)
        return cl.generate(m, inputs_embeds=x, max_new_tokens=NEW, dst=0).tokens

    tokens = on_parties(run_parties, 2, fn)
    assert torch.equal(tokens[0], want) and tokens[1] is None


@pytest.mark.parametrize("dst", [None, 1])
def test_eos_stops_every_party_at_the_same_step(run_parties, gpt2, dst) -> None:
    model, prompt, want = gpt2
    eos = int(want[0, 1])  # row 0 produces it at step 2; stop once both rows have
    steps = max(int((row == eos).nonzero()[0]) + 1 if (row == eos).any() else NEW for row in want)

    def fn(party: Any) -> Any:
        m = cl.encrypt_module(copy.deepcopy(model))
        g = cl.generate(m, prompt, max_new_tokens=NEW, reveal="each", dst=dst, eos_token_id=eos)
        return g.tokens, g.onehot.shape[1]

    for rank, (tokens, n) in enumerate(on_parties(run_parties, 3, fn)):
        assert n == steps
        if dst is None or rank == dst:
            assert torch.equal(tokens, want[:, :steps])
        else:
            assert tokens is None


def test_invalid_arguments_fail_on_every_party(run_parties, gpt2) -> None:
    model, prompt, _ = gpt2

    def fn(party: Any) -> Any:
        m = cl.encrypt_module(copy.deepcopy(model))
        errors = []
        for kwargs in (
            {"eos_token_id": 0},
            {"reveal": "some"},
            {"do_sample": True, "temperature": 0.0},
        ):
            try:
                cl.generate(m, prompt, **kwargs)
            except ConfigurationError as exc:
                errors.append(str(exc))
        try:
            cl.generate(model, prompt)
        except ConfigurationError as exc:
            errors.append(str(exc))
        return errors

    for errors in on_parties(run_parties, 2, fn):
        assert len(errors) == 4
        assert "reveal='each'" in errors[0] and "not encrypted" in errors[3]


def test_sampling_follows_the_softmax(run_parties, world_size) -> None:
    """4000 rows of the same logits: token frequencies within 5 standard deviations."""
    logits = torch.tensor([2.0, 0.0, -1.0, 1.0, -3.0, 0.5])
    temperature = 0.8
    rows = 4000
    probs = torch.softmax(logits / temperature, -1)

    def fn(party: Any) -> Any:
        z = cl.cryptensor(logits.expand(rows, -1).contiguous())
        return _sample(z, temperature).get_plain_text()

    for onehot in on_parties(run_parties, world_size, fn):
        assert torch.equal(onehot.sum(-1), torch.ones(rows))
        assert set(onehot.unique().tolist()) <= {0.0, 1.0}
        freq = onehot.mean(0)
        sigma = (probs * (1 - probs) / rows).sqrt()
        assert bool(((freq - probs).abs() <= 5 * sigma + 1e-3).all()), (freq, probs)
