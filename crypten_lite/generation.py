"""Layer L5: private text generation with an encrypted causal language model.

HuggingFace's ``generate()`` cannot run on encrypted logits: its stopping criteria branch on
``Tensor.any`` of a secret, which raises (``SecretLeakError``), as every data-dependent Python
decision must. :func:`generate` is the loop written for secrets: each new token is chosen
inside MPC as a *one-hot* secret vector, fed back through a one-hot product with the
(encrypted) embedding table, and revealed only as the caller chooses:

* ``reveal="end"`` (default): nothing is revealed until the last step; then the token ids are
  opened (to ``dst`` only, when given).
* ``reveal="each"``: each token is opened as soon as it is chosen (to ``dst``, or to everyone).
  Only then can generation stop early at ``eos_token_id``: if ``dst`` alone sees the tokens,
  it broadcasts one "stop" bit per step, which reveals to the others the step at which the
  text ended (nothing else).
* ``reveal="none"``: nothing is revealed; the result is the encrypted one-hots.

Token choice, both over the next-token logits ``z`` (``B x V``) of the last position:

* greedy: the one-hot of ``argmax z`` by the comparison tree of ``protocols.reduction`` (ties
  to the lowest id, as torch). Cost: ``ceil(log_10 V)`` levels of 5 rounds.
* sampling (``do_sample=True``): inverse-transform sampling with a secret uniform ``u``:
  ``e = relu(exp(z / T - max z / T + 8))`` and ``C = cumsum(e)`` (exact: shares add); the chosen
  token is the first ``k`` with ``C_k > u * C_V``. Its one-hot is ``b_k - b_{k-1}`` with
  ``b_k = [C_k > u * C_V]`` (one batched comparison; ``b_V = 1`` is public, so exactly one
  token is chosen even when ``u * C_V`` rounds up). ``e`` is clamped at 0 so that ``C`` is
  monotone whatever the rounding of ``exp``, and ``b`` is a step. The token is distributed as
  ``softmax(z / T)``, up to the error of ``exp`` and the fixed-point resolution: a token's
  weight is off by up to one ulp (``2**-f``) against a total of at least ``e**8``, so over a
  vocabulary of ``V`` the probability mass misplaced is at most ``V * 2**-f / e**8``
  (``2.6e-4`` for ``V = 50257``); tokens more than 24 below the best logit (after the
  temperature) count as 24 below, and ``u``'s resolution is ``2**-(f-1)``.
  Cost: a max tree, one ``exp``, one ReLU, one product and one comparison, plus 1 round to
  make ``u``.

Why not the Gumbel-max trick: it needs ``log(-log u)`` for ``V`` uniforms, and for a
vocabulary of ``10**4 .. 10**5`` the winning noise sits where ``-log u`` is about ``1 / V``,
below the fixed-point ``log``'s absolute error (3.4e-5 at ``f = 16``): the sample would be
biased exactly where it matters. The inverse transform needs no logarithm.

The shared uniform ``u``: every party draws ``f - 1`` random bits from its private PRG and
holds them as its XOR share, so ``u``'s bits are the XOR of all parties' (uniform unless all
parties collude); one B2A round makes them arithmetic shares of ``u * 2**(f-1)``.

Security: semi-honest, as the protocols used; only the values chosen by ``reveal`` are opened.
Each step re-runs the model over the whole sequence (no key/value cache): ``T`` new tokens
cost ``T`` forward passes over growing sequences. For long vocabularies, call
``crypten_lite.nn.reuse_weight_masks(model)`` first so the one-hot products with the embedding
table open the table's mask once rather than at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from crypten_lite.errors import ConfigurationError
from crypten_lite.protocols import conversion, reduction
from crypten_lite.protocols.binary import and_public
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, is_encrypted

__all__ = ["Generation", "generate", "secret_uniform"]

Reveal = Literal["end", "each", "none"]


@dataclass
class Generation:
    """What :func:`generate` returns.

    Attributes:
        tokens: the new token ids, ``(B, n)`` int64, on the parties that were shown them
            (``None`` elsewhere, and with ``reveal="none"``).
        onehot: the new tokens as encrypted one-hots, ``(B, n, V)`` float32 0/1.
    """

    tokens: torch.Tensor | None
    onehot: MPCTensor


def secret_uniform(shape: tuple[int, ...], party: Party) -> MPCTensor:
    """Secret ``u`` uniform on ``{0, 1, ..., 2**(f-1) - 1} / 2**(f-1)`` that no party knows.

    1. Every party draws a random word from its private PRG and keeps its ``f - 1`` low bits:
       its XOR share of ``k = u * 2**(f-1)`` (uniform unless all parties collude).
    2. B2A: arithmetic shares of ``k`` (scale 0); a left shift by 1 puts ``u`` at scale ``f``.

    Cost: 1 round, 8 bytes per element to each peer.
    Security: semi-honest; any ``N - 1`` parties miss one uniform XOR share.
    Reference: bitwise B2A with random bits (daBits), Rotaru and Wood, INDOCRYPT'19.
    """
    bits = party.frac_bits - 1
    words = and_public(party.local_prg.random_int64(shape), (1 << bits) - 1)
    k = conversion.b2a(words, party, tag="generate.uniform")
    return MPCTensor(k << (party.frac_bits - bits), party)


def _onehot_float(onehot: torch.Tensor, party: Party) -> MPCTensor:
    """Scale-0 one-hot shares (ring 0/1) as a float32 encrypted tensor (scale ``f``)."""
    return MPCTensor(onehot << party.frac_bits, party)


def _greedy(logits: Any) -> MPCTensor:
    party = logits.party
    return _onehot_float(reduction.argmax(logits.share.contiguous(), party, -1), party)


def _sample(logits: Any, temperature: float) -> Any:
    party = logits.party
    z = logits / temperature if temperature != 1.0 else logits
    top = z.amax(-1, keepdim=True)
    # exp(z - top + 8): the most likely token weighs e**8, so the one-ulp rounding of the
    # (many) unlikely tokens' weights is 3000 times smaller relative to the total; arguments
    # stay in [-16, 8], inside exp's domain.
    e = torch.relu(torch.exp(torch.clamp(z - top, min=-24.0) + 8.0))
    c = torch.cumsum(e, -1)
    u = secret_uniform(tuple(c.shape[:-1]) + (1,), party)
    t = u * c[..., -1:]
    b = (c[..., :-1] > t).float()  # 0/1 secrets, monotone in k since c is
    last = torch.ones_like(b[..., :1])  # b_V = 1: public
    b = torch.cat([b, last], -1)
    prev = torch.cat([torch.zeros_like(b[..., :1]), b[..., :-1]], -1)
    return b - prev


def _logits_of(output: Any) -> MPCTensor:
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) else output
    if not is_encrypted(logits):
        raise ConfigurationError(
            "generate(): the model's logits are not encrypted (encrypt the model first: "
            "crypten_lite.encrypt_module)"
        )
    return logits  # type: ignore[no-any-return]


def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor | None = None,
    *,
    inputs_embeds: MPCTensor | None = None,
    max_new_tokens: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    reveal: Reveal = "end",
    dst: int | None = None,
    eos_token_id: int | None = None,
) -> Generation:
    """Generate up to ``max_new_tokens`` tokens with an encrypted causal LM (module docstring).

    Every party calls it with the same arguments (the prompt's values only where they are
    secret). The model is any ``torch.nn.Module`` called as ``model(inputs_embeds=...)``
    whose output (or its ``.logits``) is ``(B, T, V)`` logits and whose
    ``get_input_embeddings()`` is the ``V x H`` token embedding (HuggingFace causal LMs).

    Args:
        input_ids: a public prompt ``(B, T)`` (every party knows it), or
        inputs_embeds: a private prompt, already embedded: encrypted ``(B, T, H)``.
        do_sample: sample from ``softmax(logits / temperature)`` instead of greedy argmax.
        reveal: ``"end"``, ``"each"`` or ``"none"`` (module docstring).
        dst: the one party shown the tokens (``None``: every party).
        eos_token_id: stop once every sequence has produced it (``reveal="each"`` only).

    Returns:
        A :class:`Generation`.

    Raises:
        ConfigurationError: invalid arguments (the same on every party, so every party raises).
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise ConfigurationError("generate(): pass exactly one of input_ids and inputs_embeds")
    if reveal not in ("end", "each", "none"):
        raise ConfigurationError(
            f"generate(): reveal must be 'end', 'each' or 'none', not {reveal!r}"
        )
    if eos_token_id is not None and reveal != "each":
        raise ConfigurationError(
            "generate(): stopping at eos_token_id depends on the tokens, so it needs "
            "reveal='each' (with reveal='end', trim the returned tokens instead)"
        )
    if do_sample and not temperature > 0:
        raise ConfigurationError(f"generate(): temperature must be > 0, not {temperature}")
    table = model.get_input_embeddings().weight  # type: ignore[operator]
    if not is_encrypted(table):
        raise ConfigurationError("generate(): the model's embedding table is not encrypted")
    party: Party = table.party
    if input_ids is not None:
        embeds: Any = torch.nn.functional.embedding(input_ids, table)
    else:
        embeds = inputs_embeds
    chosen: list[Any] = []
    shown: list[torch.Tensor] = []
    vocab = table.shape[0]
    ids = torch.arange(vocab, dtype=torch.float32)
    done = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits: Any = _logits_of(model(inputs_embeds=embeds))[:, -1, :]
            onehot: Any = _sample(logits, temperature) if do_sample else _greedy(logits)
            chosen.append(onehot)
            token_pub = None
            if reveal == "each":
                opened = (onehot * ids).sum(-1).get_plain_text(dst)
                if opened is not None:
                    token_pub = opened.round().to(torch.int64)
                    shown.append(token_pub)
            if token_pub is not None and dst is None:
                step = torch.nn.functional.embedding(token_pub, table)  # public index: local
            else:
                step = onehot @ table  # one Beaver product per step
            embeds = torch.cat([embeds, step.unsqueeze(1)], 1)
            if eos_token_id is not None:
                stop = None
                if token_pub is not None:
                    hit = token_pub == eos_token_id
                    done = hit if done is None else done | hit
                    stop = torch.tensor([int(bool(done.all()))])
                if dst is not None:
                    stop = party.comm.broadcast(stop, dst, "generate.stop")
                assert stop is not None
                if int(stop[0]):
                    break
    onehots: Any = torch.stack(chosen, 1)
    tokens: torch.Tensor | None = None
    if reveal == "each" and shown:
        tokens = torch.stack(shown, 1)
    elif reveal == "end":
        opened = (onehots * ids).sum(-1).get_plain_text(dst)
        tokens = None if opened is None else opened.round().to(torch.int64)
    return Generation(tokens=tokens, onehot=onehots)
