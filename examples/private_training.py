"""Private training: two hospitals train one model on their pooled patients, pooling nothing.

scikit-learn's breast-cancer data (569 patients, 30 features, bundled, no download) stands in
for two hospitals' records: the training rows are split between party 0 (hospital A) and
party 1 (hospital B). Neither sees the other's rows, yet together they train

* a logistic regression, and
* a small MLP (30 -> 16 -> ReLU -> 1),

with ordinary PyTorch code — ``torch.nn``, ``torch.nn.functional``, ``torch.optim.SGD`` and
``loss.backward()`` — running on encrypted tensors. The steps:

1. Standardisation statistics without pooling: each hospital secret-shares its per-feature
   sums and sums of squares; only the totals are opened (a deliberate, declared disclosure of
   the joint mean and standard deviation). Each hospital standardises its own rows.
2. Each hospital secret-shares its standardised rows and labels.
3. Mini-batch SGD on the encrypted data and encrypted weights. Each step's loss is opened to
   hospital A only, which shows it in a progress bar.
4. The trained weights are opened to hospital A, which evaluates them on held-out patients.

For comparison, hospital A also trains the same models in plaintext on the pooled rows, the same
way (same initial weights, batches and learning rate). In reality nobody holds the pooled rows —
that is the point — but the dataset is public, so the demo can compute this reference. Hospital A
prints both test accuracies, writes a plot of the private and plaintext loss curves
(``--out DIR``, default ``out/``) and prints a ``RESULT {json}`` line.

Run it::

    crypten-lite launch -n 2 --dealer examples/private_training.py [--quick] [--out DIR]
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import Cost, measure, parse_args, print_result

import crypten_lite

ANALYST = 0  # hospital A: sees the loss, receives the trained models
HOSPITALS = (0, 1)  # the ranks of the two data owners
BATCH_SIZE = 64
TITLES = {"logreg": "logistic regression", "mlp": "MLP 30-16-1"}
SEED = 0


# --------------------------------------------------------------------------- data


def load_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The breast-cancer data, split 80/20 into train and test rows (raw features, labels 0/1)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y
    )
    return tuple(torch.tensor(a, dtype=torch.float32) for a in (x_train, y_train, x_test, y_test))


def my_rows(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows hospital ``rank`` holds: every other row of the training split."""
    x_train, y_train, _, _ = load_split()
    return x_train[rank :: len(HOSPITALS)], y_train[rank :: len(HOSPITALS)]


def joint_statistics(x: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of every feature over all hospitals' rows (step 1).

    Each hospital secret-shares ``[n, sum x, sum x^2]`` of its own rows; adding encrypted
    tensors is local, so the only messages are the sharing and the opening of the totals.

    Args:
        x: this party's rows ``(n_i, d)``, or ``None`` for a party without data.
    """
    party = crypten_lite.get_party()
    totals = None
    for owner in HOSPITALS:
        mine = None
        if party.rank == owner:
            assert x is not None
            mine = torch.cat([torch.tensor([float(len(x))]), x.sum(0), (x * x).sum(0)])
        shared = crypten_lite.cryptensor(mine, src=owner)
        totals = shared if totals is None else totals + shared
    assert totals is not None
    totals_pub = totals.get_plain_text()  # the declared disclosure: joint n, sums, sums of squares
    d = (totals_pub.numel() - 1) // 2
    n, s1, s2 = totals_pub[0], totals_pub[1 : 1 + d], totals_pub[1 + d :]
    mean = s1 / n
    std = (s2 / n - mean * mean).clamp_min(1e-12).sqrt()
    return mean, std


# --------------------------------------------------------------------------- models, training


def make_models() -> dict[str, torch.nn.Module]:
    """The two models, with the same initial weights on every party (fixed seed)."""
    torch.manual_seed(SEED)
    return {
        "logreg": torch.nn.Linear(30, 1),
        "mlp": torch.nn.Sequential(
            torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
        ),
    }


def batches(n: int, epochs: int) -> list[torch.Tensor]:
    """Mini-batch row indices for ``epochs`` passes (public: every party draws the same)."""
    generator = torch.Generator().manual_seed(SEED)
    return [
        i for _ in range(epochs) for i in torch.randperm(n, generator=generator).split(BATCH_SIZE)
    ]


def train(
    model: torch.nn.Module,
    x: Any,
    y: Any,
    steps: list[torch.Tensor],
    lr: float,
    read_loss: Callable[[Any], float | None],
    progress: Any = None,
) -> list[float]:
    """Plain PyTorch training — the same code for plaintext and encrypted tensors.

    ``read_loss`` turns the loss into a number for the log: ``.item()`` in plaintext,
    ``get_plain_text(dst=ANALYST)`` when encrypted (``None`` on the other parties).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for idx in steps:
        optimizer.zero_grad()
        logits = model(x[idx]).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y[idx])
        loss.backward()
        optimizer.step()
        value = read_loss(loss.detach())
        if value is not None:
            losses.append(value)
            if progress is not None:
                progress.set_postfix(loss=f"{value:.4f}", refresh=False)
                progress.update()
    return losses


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return ((model(x).squeeze(1) > 0).float() == y).float().mean().item()


class _Lines:
    """A file for tqdm that ends every refresh with a newline.

    The launcher relays a party's output line by line, so a bar redrawn with ``\\r`` would only
    appear when the line ends; printing each (rate-limited) refresh as a line keeps it live.
    """

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text:
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress_bar(name: str, total: int) -> Any:
    from tqdm import tqdm

    stream = sys.stderr if sys.stderr.isatty() else _Lines()
    return tqdm(total=total, desc=f"private {name}", file=stream, mininterval=2.0, ncols=80)


def plot(curves: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    """Private vs plaintext loss per step, one panel per model (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.5))
    for ax, (name, (private, plain)) in zip(axes, curves.items(), strict=True):
        ax.plot(plain, label="plaintext (pooled rows)", linewidth=2)
        ax.plot(private, "--", label="private (MPC)", linewidth=2)
        ax.set(title=TITLES[name], xlabel="SGD step", ylabel="training loss (binary cross-entropy)")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def open_loss(loss: Any) -> float | None:
    """The encrypted loss, opened to the analyst only (the other party gets ``None``)."""
    value = loss.get_plain_text(dst=ANALYST)
    return None if value is None else float(value)


def evaluate(
    name: str,
    model: torch.nn.Module,
    reference: torch.nn.Module,
    mean: torch.Tensor,
    std: torch.Tensor,
    steps: list[torch.Tensor],
    lr: float,
    private_losses: list[float],
    cost: Cost,
) -> tuple[dict[str, Any], tuple[list[float], list[float]]]:
    """The analyst's view: test accuracy of the privately trained model, and the plaintext
    reference trained on the pooled rows (demo only, see the module docstring)."""
    pooled_x = torch.cat([my_rows(r)[0] for r in HOSPITALS])
    pooled_y = torch.cat([my_rows(r)[1] for r in HOSPITALS])
    plain_losses = train(
        reference, (pooled_x - mean) / std, pooled_y, steps, lr, lambda t: t.item()
    )
    _, _, x_test, y_test = load_split()
    x_test = (x_test - mean) / std
    private_acc, plain_acc = accuracy(model, x_test, y_test), accuracy(reference, x_test, y_test)
    print(f"{name}: private training  {cost}")
    print(f"{name}: {len(steps)} steps, {1000 * cost.seconds / len(steps):.0f} ms per step")
    print(
        f"{name}: final loss        private {private_losses[-1]:.4f}, plaintext {plain_losses[-1]:.4f}"
    )
    print(f"{name}: test accuracy     private {private_acc:.2%}, plaintext {plain_acc:.2%}")
    result = {
        "private_acc": round(private_acc, 4),
        "plain_acc": round(plain_acc, 4),
        "private_loss": round(private_losses[-1], 4),
        "plain_loss": round(plain_losses[-1], 4),
        "steps": len(steps),
        "seconds": round(cost.seconds, 3),
        "rounds": cost.rounds,
        "bytes_sent": cost.bytes_sent,
    }
    return result, (private_losses, plain_losses)


# --------------------------------------------------------------------------- main


def main() -> None:
    args = parse_args(__doc__, out="out")
    party = crypten_lite.init()
    rank = party.rank
    if party.world_size != len(HOSPITALS):
        raise SystemExit("this example has two data owners: crypten-lite launch -n 2 --dealer")
    epochs = 4 if args.quick else 15
    lr = {"logreg": 0.1, "mlp": 0.05}

    # Steps 1 and 2: standardise with joint statistics, then secret-share rows and labels.
    x_mine, y_mine = my_rows(rank)
    print(f"hospital {'AB'[rank]}: I hold {len(y_mine)} training rows")
    mean, std = joint_statistics(x_mine)
    x_parts, y_parts = [], []
    for owner in HOSPITALS:
        mine = owner == rank
        x_parts.append(crypten_lite.cryptensor((x_mine - mean) / std if mine else None, src=owner))
        y_parts.append(crypten_lite.cryptensor(y_mine if mine else None, src=owner))
    x, y = torch.cat(x_parts), torch.cat(y_parts)  # encrypted, (n, 30) and (n,)
    steps = batches(x.shape[0], epochs)

    # Step 3: train each model privately. Step 4: open the weights to the analyst.
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for name, model in make_models().items():
        reference = copy.deepcopy(model)  # same initial weights, for the plaintext reference
        crypten_lite.encrypt_module(model, src=ANALYST)
        bar = progress_bar(name, len(steps)) if rank == ANALYST else None
        with measure(party) as cost:
            private_losses = train(model, x, y, steps, lr[name], open_loss, progress=bar)
        if bar is not None:
            bar.close()
        crypten_lite.decrypt_module(model, dst=ANALYST)
        if rank == ANALYST:
            results[name], curves[name] = evaluate(
                name, model, reference, mean, std, steps, lr[name], private_losses, cost
            )

    if rank == ANALYST:
        path = Path(args.out) / "private_training_loss.png"
        plot(curves, path)
        print(f"loss curves written to {path}")
        print_result(**results)
    crypten_lite.uninit()


if __name__ == "__main__":
    main()
