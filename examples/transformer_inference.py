"""Private transformer inference: an unmodified ``torch.nn.TransformerEncoderLayer`` on secrets.

The model owner (party 0) trains a small transformer encoder classifier in plaintext on a
synthetic task: *does a sequence of 12 tokens (vocabulary of 8) contain token 3 immediately
followed by token 5?* Detecting an adjacent pair anywhere in the sequence needs attention (a
head learns to look at the previous position) and a position-wise MLP, so the task exercises
every part of the layer: embedding, learned positions, layer norm, multi-head attention with
softmax, GELU, max-pooling over positions and the linear head.

The data owner (party 1) secret-shares its token ids — integers, so the embedding lookup runs
on *secret indices* (an encrypted one-hot matrix times the table) — and alone learns the
predicted labels. The script checks the model's ops first (``crypten_lite.nn.from_pytorch``
with a dummy input lists every unsupported op at once), then prints the agreement between the
private and plaintext predictions, the time, rounds and bytes, and a ``RESULT {json}`` line.

Run it::

    crypten-lite launch -n 2 --dealer examples/transformer_inference.py [--quick]

As in ``private_inference.py``, measuring agreement needs the plaintext model's predictions:
*for the demo's check only*, the model owner reveals its weights to the data owner at the end.
"""

from __future__ import annotations

import torch
from _common import measure, parse_args, print_result

import crypten_lite

MODEL_OWNER = 0
DATA_OWNER = 1
VOCAB, LENGTH, WIDTH = 8, 12, 16
PATTERN = (3, 5)


def make_sequences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random token sequences ``(n, LENGTH)`` int64, half of them with ``PATTERN``
    planted at a random position, and their labels ``(n,)`` (1 = the pattern occurs)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, LENGTH), generator=gen)
    where = torch.randint(0, LENGTH - 1, (n,), generator=gen)
    rows = torch.nonzero(torch.rand(n, generator=gen) < 0.5).flatten()
    tokens[rows, where[rows]] = PATTERN[0]
    tokens[rows, where[rows] + 1] = PATTERN[1]
    found = (tokens[:, :-1] == PATTERN[0]) & (tokens[:, 1:] == PATTERN[1])
    return tokens, found.any(dim=1).long()


class PatternClassifier(torch.nn.Module):
    """Token + position embeddings -> one pre-norm encoder layer -> max over positions -> 2
    logits. Plain ``torch.nn``: nothing here knows about encryption."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = torch.nn.Embedding(VOCAB, WIDTH)
        self.positions = torch.nn.Parameter(0.1 * torch.randn(LENGTH, WIDTH))
        self.encoder = torch.nn.TransformerEncoderLayer(
            WIDTH,
            nhead=4,
            dim_feedforward=2 * WIDTH,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.head = torch.nn.Linear(WIDTH, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.tokens(tokens) + self.positions)  # (n, LENGTH, WIDTH)
        return self.head(h.amax(dim=1))  # (n, 2)


def train(epochs: int, seed: int = 0) -> PatternClassifier:
    """Plaintext training on 3,000 sequences (AdamW, one-cycle schedule, a few seconds)."""
    x, y = make_sequences(3000, seed)
    torch.manual_seed(seed)
    model = PatternClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    per_epoch = (len(y) + 63) // 64
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=epochs * per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=gen).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def main() -> None:
    args = parse_args(__doc__, batch_size=100)
    party = crypten_lite.init()
    rank = party.rank
    n_test = 100 if args.quick else 500

    # 1. The model owner trains; the others build the same architecture (shapes only).
    if rank == MODEL_OWNER:
        model = train(epochs=10 if args.quick else 20)
    else:
        model = PatternClassifier().eval()
    # Every op of the model, forward only, checked on fake encrypted tensors (no messages).
    dummy = torch.zeros(1, LENGTH, dtype=torch.int64)
    crypten_lite.nn.from_pytorch(model, dummy)  # raises, listing every unsupported op
    crypten_lite.encrypt_module(model, src=MODEL_OWNER)
    crypten_lite.nn.reuse_weight_masks(model)

    # 2. The data owner secret-shares its token ids (int64: secret indices, not fixed point).
    tokens = labels = None
    if rank == DATA_OWNER:
        tokens, labels = make_sequences(n_test, seed=1)  # fresh sequences, not seen in training
    party.comm.barrier()  # wait for the model owner's training, so it is not timed below
    secret_tokens = crypten_lite.cryptensor(tokens, src=DATA_OWNER)

    # 3. Private inference; only the predicted labels are opened, to the data owner.
    with torch.no_grad(), measure(party) as cost, crypten_lite.profile() as prof:
        predicted = [model(b).argmax(dim=1) for b in secret_tokens.split(args.batch_size)]
        predicted = torch.cat(predicted).get_plain_text(dst=DATA_OWNER)

    # 4. Demo-only check: reveal the weights to the data owner for the plaintext comparison.
    crypten_lite.decrypt_module(model, dst=DATA_OWNER)

    if rank == DATA_OWNER:
        assert predicted is not None and tokens is not None and labels is not None
        with torch.no_grad():
            plain = model(tokens).argmax(dim=1)
        private_acc = (predicted == labels).float().mean().item()
        plain_acc = (plain == labels).float().mean().item()
        agreement = (predicted == plain).float().mean().item()
        print(prof.table(sort_by="seconds"))
        print(f"sequences classified privately : {n_test} (batches of {args.batch_size})")
        print(f"private accuracy               : {private_acc:.2%}")
        print(f"plaintext accuracy             : {plain_acc:.2%}")
        print(f"agreement with plaintext       : {agreement:.2%}")
        print(f"private inference              : {cost}")
        print(f"per sequence                   : {1000 * cost.seconds / n_test:.1f} ms")
        print_result(
            n_sequences=n_test,
            private_acc=round(private_acc, 4),
            plain_acc=round(plain_acc, 4),
            agreement=round(agreement, 4),
            seconds=round(cost.seconds, 3),
            rounds=cost.rounds,
            bytes_sent=cost.bytes_sent,
            bytes_received=cost.bytes_received,
        )
    crypten_lite.uninit()


if __name__ == "__main__":
    main()
