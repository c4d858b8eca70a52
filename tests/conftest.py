"""Shared fixtures: run protocol code as N parties in threads (tests/mpc) with either dealer.

Protocol family: ``run_parties(fn, 3, protocol="replicated")`` runs the replicated family
(3 parties, no dealer). Setting ``CRYPTEN_LITE_TEST_PROTOCOL=replicated`` runs every 3-party
``run_parties`` call that does not choose a family under the replicated family instead, e.g.
``CRYPTEN_LITE_TEST_PROTOCOL=replicated pytest tests/mpc -k 3p``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from crypten_lite.config import Config
from crypten_lite.runtime.party import run_threads

FAMILY_ENV = "CRYPTEN_LITE_TEST_PROTOCOL"


@pytest.fixture(params=[2, 3], ids=lambda n: f"{n}p")
def world_size(request: pytest.FixtureRequest) -> int:
    """Every protocol test runs for 2 and 3 parties."""
    return int(request.param)


@pytest.fixture
def run_parties() -> Callable[..., list[Any]]:
    """``run_parties(fn, n, dealer="tfp", protocol=None, **config)`` -> each party's result."""

    def run(
        fn: Callable[..., Any],
        n: int,
        *,
        dealer: str = "tfp",
        args: tuple[Any, ...] = (),
        protocol: str | None = None,
        **config: Any,
    ) -> list[Any]:
        if protocol is None:
            protocol = os.environ.get(FAMILY_ENV, "beaver") if n == 3 else "beaver"
        cfg = Config(
            transport="inproc",
            dealer=dealer,
            timeout_s=config.pop("timeout_s", 20.0),
            protocol=protocol,
            **config,
        )
        return run_threads(fn, n, config=cfg, args=args, timeout_s=90.0)

    return run
