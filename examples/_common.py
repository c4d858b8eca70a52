"""Helpers shared by the examples: command line, the RESULT line, cost reports, digits data.

Not an example itself. Each example script imports it as ``_common`` (the launcher puts the
script's folder first on ``sys.path``, like ``python script.py`` does).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from crypten_lite.runtime.party import Party

__all__ = [
    "Cost",
    "DigitsCNN",
    "human_bytes",
    "load_digits_split",
    "measure",
    "parse_args",
    "print_result",
    "train_digits_cnn",
]


def parse_args(description: str, **extra: Any) -> argparse.Namespace:
    """The examples' command line: ``--quick`` plus any ``--name`` given as ``name=default``."""
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smaller run (used by the tests, a few seconds)"
    )
    for name, default in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=default, type=type(default))
    return parser.parse_args()


def print_result(**values: Any) -> None:
    """Print the example's key results as one machine-readable line: ``RESULT {json}``.

    Only the party that legitimately learned the values calls it; the tests parse this line.
    """
    print("RESULT " + json.dumps(values, sort_keys=True), flush=True)


# --------------------------------------------------------------------------- what it cost


@dataclass
class Cost:
    """Wall time and this party's communication (from ``party.comm.stats``) for one block."""

    seconds: float = 0.0
    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0

    def __str__(self) -> str:
        return (
            f"{self.seconds:.3f} s, {self.rounds} rounds, "
            f"{human_bytes(self.bytes_sent)} sent, {human_bytes(self.bytes_received)} received"
        )


def human_bytes(n: int) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units, as network rates are quoted)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@contextmanager
def measure(party: Party) -> Iterator[Cost]:
    """``with measure(party) as cost:`` fills ``cost`` with what the block took on this party.

    It counts every message of the block, including sharing inputs and opening outputs (which
    ``crypten_lite.profile()`` reports separately as ``(outside ops)``).
    """
    cost = Cost()
    start = party.comm.stats.snapshot().total
    t0 = time.perf_counter()
    try:
        yield cost
    finally:
        now = party.comm.stats.total
        cost.seconds = time.perf_counter() - t0
        cost.rounds = now.rounds - start.rounds
        cost.bytes_sent = now.bytes_sent - start.bytes_sent
        cost.bytes_received = now.bytes_received - start.bytes_received


# --------------------------------------------------------------------------- digits + a CNN


def load_digits_split(
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits (1,797 8x8 images, bundled, no download), split 80/20.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images float32 ``(n, 1, 8, 8)`` scaled to
        ``[0, 1]``, labels int64 ``(n,)``. The split is fixed by ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.2, random_state=seed, stratify=y.numpy()
    )
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


class DigitsCNN(torch.nn.Module):
    """A small LeNet-style CNN for 8x8 digits: two conv/ReLU/max-pool blocks and a linear layer.

    ``(n, 1, 8, 8)`` -> conv 3x3 (8 ch) -> ReLU -> pool -> ``(n, 8, 4, 4)`` -> conv 3x3 (16 ch)
    -> ReLU -> pool -> ``(n, 16, 2, 2)`` -> linear -> ``(n, 10)`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
        self.classifier = torch.nn.Linear(16 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def train_digits_cnn(
    x: torch.Tensor, y: torch.Tensor, *, epochs: int = 10, seed: int = 0
) -> DigitsCNN:
    """Train :class:`DigitsCNN` in plaintext (Adam with a cosine schedule, mini-batches of 32,
    fixed seed; about half a second for 10 epochs)."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        schedule.step()
    return model.eval()
