"""The README's commands work as written.

Every fenced block preceded by a ``<!-- runnable -->`` line is run: a ``bash`` block line by line
from the repository root (as a new user would type it after ``make`` set up ``.venv``), a
``python`` block as a party script under ``crypten-lite launch -n 2 --dealer``. ``make test``
itself is not marked runnable: it is the suite running this test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_BLOCK = re.compile(r"<!-- runnable -->\n```(\w+)\n(.*?)\n```", re.DOTALL)


def runnable_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(README.read_text())]


def _commands(block: str) -> list[str]:
    return [
        line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _run(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_readme_has_runnable_blocks() -> None:
    kinds = [kind for kind, _ in runnable_blocks()]
    assert "bash" in kinds and "python" in kinds, kinds


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "command",
    [c for kind, block in runnable_blocks() if kind == "bash" for c in _commands(block)],
)
def test_readme_shell_command_runs(command: str) -> None:
    if not (ROOT / ".venv" / "bin" / "crypten-lite").exists():
        pytest.skip("no .venv: the README's commands assume `make` has set it up")
    result = _run(command, timeout=300)
    assert result.returncode == 0, (
        f"`{command}` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


@pytest.mark.timeout(300)
def test_readme_python_quick_start_runs(tmp_path: Path) -> None:
    blocks = [block for kind, block in runnable_blocks() if kind == "python"]
    assert blocks
    for i, block in enumerate(blocks):
        script = tmp_path / f"readme_{i}.py"
        script.write_text(block + "\n")
        result = _run(
            f"{sys.executable} -m crypten_lite.launcher launch -n 2 --dealer {script}", timeout=240
        )
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "[party 1]" in result.stdout
