"""Shared fixtures: run protocol code as N parties in threads (tests/mpc) with either dealer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from crypten_lite.config import Config
from crypten_lite.party import run_threads


@pytest.fixture(params=[2, 3], ids=lambda n: f"{n}p")
def world_size(request: pytest.FixtureRequest) -> int:
    """Every protocol test runs for 2 and 3 parties."""
    return int(request.param)


@pytest.fixture
def run_parties() -> Callable[..., list[Any]]:
    """``run_parties(fn, n, dealer="tfp", **config)`` -> each party's ``fn(party)`` result."""

    def run(
        fn: Callable[..., Any],
        n: int,
        *,
        dealer: str = "tfp",
        args: tuple[Any, ...] = (),
        **config: Any,
    ) -> list[Any]:
        cfg = Config(
            transport="inproc", dealer=dealer, timeout_s=config.pop("timeout_s", 20.0), **config
        )
        return run_threads(fn, n, config=cfg, args=args, timeout_s=90.0)

    return run
