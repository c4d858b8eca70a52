"""Private text generation: an encrypted GPT-2 continues an encrypted prompt.

The model owner (party 0) holds a GPT-2 (HuggingFace ``transformers``; a small configuration
with random weights, so nothing is downloaded). The prompt owner (party 1) holds a prompt of
token ids. Neither shows its secret: the weights are secret-shared with
``crypten_lite.encrypt_module`` and the prompt with ``crypten_lite.cryptensor`` (its embedding
is a lookup at *secret* indices). ``crypten_lite.generate`` then chooses every new token inside
MPC (greedy: a secure argmax; sampling: inverse-transform sampling with a secret uniform) and
feeds it back as an encrypted one-hot; nothing is revealed until the end, when the prompt
owner alone learns the new tokens (``reveal="end", dst=1``).

HuggingFace's own ``model.generate()`` cannot do this: its stopping criteria branch on
``Tensor.any`` of the (secret) tokens.

Run it::

    crypten-lite launch -n 2 --dealer examples/private_generation.py [--quick]

To check the result, *for the demo only*, the model owner reveals its weights to the prompt
owner at the end, who compares with plaintext greedy generation by ``model.generate()``.
"""

from __future__ import annotations

import torch
from _common import measure, parse_args, print_result

import crypten_lite

MODEL_OWNER = 0
PROMPT_OWNER = 1


def make_model(quick: bool, seed: int) -> torch.nn.Module:
    """A small random GPT-2 (``transformers``); the seed stands for the owner's trained weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=64 if quick else 256,
        n_embd=32,
        n_layer=1 if quick else 2,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.3,  # GPT-2's 0.02 makes a random model repeat the last token
    )
    return GPT2LMHeadModel(config).eval()


def main() -> None:
    args = parse_args(__doc__, new_tokens=0, prompt_length=6)
    party = crypten_lite.init()
    rank = party.rank
    new_tokens = args.new_tokens or (4 if args.quick else 12)

    # 1. The model owner's weights; the others build the same architecture (shapes only).
    model = make_model(args.quick, seed=1234 if rank == MODEL_OWNER else rank)
    crypten_lite.encrypt_module(model, src=MODEL_OWNER)
    crypten_lite.nn.reuse_weight_masks(model)  # the embedding table's mask is opened once

    # 2. The prompt owner's token ids, secret-shared (int64: secret indices).
    prompt = None
    if rank == PROMPT_OWNER:
        vocab = model.config.vocab_size
        prompt = torch.randint(1, vocab, (1, args.prompt_length), generator=torch.Generator())
    secret_prompt = crypten_lite.cryptensor(prompt, src=PROMPT_OWNER)
    embeds = torch.nn.functional.embedding(secret_prompt, model.get_input_embeddings().weight)

    # 3. Private generation: greedy, then sampling; the prompt owner alone learns the tokens.
    with measure(party) as cost:
        greedy = crypten_lite.generate(
            model, inputs_embeds=embeds, max_new_tokens=new_tokens, dst=PROMPT_OWNER
        )
    sampled = crypten_lite.generate(
        model,
        inputs_embeds=embeds,
        max_new_tokens=new_tokens,
        do_sample=True,
        temperature=0.8,
        dst=PROMPT_OWNER,
    )

    # 4. Demo-only check: reveal the weights to the prompt owner for the plaintext comparison.
    crypten_lite.decrypt_module(model, dst=PROMPT_OWNER)

    if rank == PROMPT_OWNER:
        assert prompt is not None and greedy.tokens is not None and sampled.tokens is not None
        with torch.no_grad():
            plain = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
        plain = plain[:, prompt.shape[1] :]
        agreement = (greedy.tokens == plain).float().mean().item()
        print(f"prompt (secret to the model owner)  : {prompt.tolist()[0]}")
        print(f"greedy, generated privately         : {greedy.tokens.tolist()[0]}")
        print(f"greedy, plaintext model.generate()  : {plain.tolist()[0]}")
        print(f"sampled privately (temperature 0.8) : {sampled.tokens.tolist()[0]}")
        print(f"private greedy generation           : {cost}")
        print(f"per token                           : {cost.seconds / new_tokens:.2f} s")
        print_result(
            new_tokens=new_tokens,
            tokens=greedy.tokens.tolist()[0],
            plain_tokens=plain.tolist()[0],
            sampled=sampled.tokens.tolist()[0],
            vocab_size=model.config.vocab_size,
            agreement=round(agreement, 4),
            seconds=round(cost.seconds, 3),
            rounds=cost.rounds,
            bytes_sent=cost.bytes_sent,
            bytes_received=cost.bytes_received,
        )
    crypten_lite.uninit()


if __name__ == "__main__":
    main()
