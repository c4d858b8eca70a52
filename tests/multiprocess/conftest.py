"""Fixtures for the multiprocess tier: run the ``crypten-lite`` CLI as a real subprocess.

Every test here starts real processes that talk over real ZeroMQ sockets, so each one keeps
its own timeouts short (a few seconds) and well below the global pytest-timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``cli(*args, timeout=60, env=None)`` runs ``python -m crypten_lite.launcher ARGS``."""

    def run(
        *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEN_LITE_")}
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "crypten_lite.launcher", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            env=full_env,
        )

    return run


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie we could reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def alive() -> Callable[[int], bool]:
    """``alive(pid)``: whether that process still exists."""
    return pid_alive
