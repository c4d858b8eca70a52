"""The examples, end to end: each runs through ``crypten-lite launch`` with ``--quick`` and
its ``RESULT {json}`` line is checked against plaintext.

Each example prints its key results as one ``RESULT`` line from the party that learns them; the
launcher prefixes it with ``[party i]``. ``--max-time`` makes the launcher stop every process of
a run that hangs, well inside the pytest timeout.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RESULT = re.compile(r"^\[party (\d+)\] RESULT (\{.*\})$", re.MULTILINE)
# Per example run, enforced by the launcher: a bound for a hung run, not a speed requirement, so
# it is generous enough for a machine loaded several times over (make test-loaded).
MAX_TIME_S = 300

needs_sklearn = pytest.mark.skipif(
    find_spec("sklearn") is None,
    reason="scikit-learn is not installed (pip install -e '.[examples]')",
)


def launch(example: str, *args: str, parties: int = 2) -> dict[int, dict[str, Any]]:
    """Run ``examples/<example>`` with ``--quick`` on ``parties`` parties and the dealer;
    return each reporting party's RESULT, by rank."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEN_LITE_")}
    env["MPLBACKEND"] = "Agg"
    command = [sys.executable, "-m", "crypten_lite.launcher", "launch", "-n", str(parties)]
    command += ["--dealer", "--timeout", "120", "--max-time", str(MAX_TIME_S)]
    command += [f"examples/{example}", "--quick", *args]
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=MAX_TIME_S + 20
    )
    assert proc.returncode == 0, f"{example} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    results = {int(rank): json.loads(body) for rank, body in RESULT.findall(proc.stdout)}
    assert results, f"{example} printed no RESULT line:\n{proc.stdout[-3000:]}"
    return results


def assert_close_to_plaintext(result: dict[str, Any], points: float = 0.02) -> None:
    assert abs(result["private_acc"] - result["plain_acc"]) <= points, result


@needs_sklearn
@pytest.mark.timeout(MAX_TIME_S + 60)
def test_private_inference_agrees_with_plaintext_on_every_digit() -> None:
    result = launch("private_inference.py")[1]  # the data owner learns the predictions
    assert result["n_images"] == 360  # the whole digits test split
    assert result["agreement"] == 1.0, result
    assert_close_to_plaintext(result)
    assert result["plain_acc"] > 0.85, result
    assert result["rounds"] > 0 and result["bytes_sent"] > 0


@needs_sklearn
@pytest.mark.timeout(MAX_TIME_S + 60)
def test_three_parties_give_the_same_predictions() -> None:
    results = launch("three_parties.py", parties=3)
    assert set(results) == {1}, "only the data owner may learn (and print) the results"
    result = results[1]
    assert result["world_size"] == 3
    assert result["agreement"] == 1.0, result
    assert_close_to_plaintext(result)


@needs_sklearn
@pytest.mark.timeout(MAX_TIME_S + 60)
def test_private_training_matches_plaintext_training(tmp_path: Path) -> None:
    pytest.importorskip("tqdm", reason="tqdm is not installed (pip install -e '.[examples]')")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed")
    result = launch("private_training.py", "--out", str(tmp_path))[0]
    for model in ("logreg", "mlp"):
        assert_close_to_plaintext(result[model])
        assert result[model]["plain_acc"] > 0.85, result
        assert abs(result[model]["private_loss"] - result[model]["plain_loss"]) < 0.05, result
    plot = tmp_path / "private_training_loss.png"
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.timeout(MAX_TIME_S + 60)
def test_transformer_inference_agrees_with_plaintext() -> None:
    result = launch("transformer_inference.py")[1]
    assert result["agreement"] >= 0.98, result
    assert_close_to_plaintext(result)


@pytest.mark.timeout(MAX_TIME_S + 60)
@pytest.mark.parametrize("parties", [2, 3])
def test_millionaires_name_the_richest(parties: int) -> None:
    results = launch("millionaires.py", parties=parties)
    assert set(results) == set(range(parties)), "every party learns the answer"
    fortunes = [results[r]["my_fortune"] for r in range(parties)]
    richest = max(range(parties), key=lambda r: (fortunes[r], -r))  # ties: the lower rank
    assert {results[r]["richest"] for r in range(parties)} == {richest}, results


@pytest.mark.timeout(150)
def test_private_generation_matches_plaintext_greedy() -> None:
    pytest.importorskip("transformers", reason="transformers is not installed")
    results = launch("private_generation.py")
    assert set(results) == {1}, "only the prompt owner may learn (and print) the tokens"
    result = results[1]
    assert result["tokens"] == result["plain_tokens"], result
    assert len(result["sampled"]) == result["new_tokens"] == 4
    assert all(0 <= t < result["vocab_size"] for t in result["sampled"])
    assert result["rounds"] > 0 and result["bytes_sent"] > 0
