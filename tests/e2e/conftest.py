"""Fixtures of the end-to-end tests: simulated hosts, session secrets, the party script.

Tests that need network namespaces skip, with the reason, when the machine cannot provide them
(not root, no iproute2, no TUN driver); nothing is ever installed from here. Every network a
test creates is torn down after it, whatever happened, and the test's processes are killed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.netns import (
    TAG_ENV,
    Network,
    netns_unavailable,
    parse_result,
    pids_with_env,
    shaping_unavailable,
    single_host,
    write_secret,
)
from tests.netns.procs import kill_pids

JOB = Path(__file__).resolve().parent / "scripts" / "mpc_job.py"


@pytest.fixture
def need_netns() -> None:
    """Skip unless network namespaces work here."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def make_network(need_netns: None) -> Iterator[Callable[[int, str], Network]]:
    """``make_network(n_hosts, profile)``: a started :class:`Network`, torn down after the test.

    A shaped profile (``lan``, ``wan``) skips the test when tc tbf or TUN are unavailable.
    """
    made: list[Network] = []

    def make(n_hosts: int, profile: str = "none") -> Network:
        if profile != "none":
            reason = shaping_unavailable()
            if reason is not None:
                pytest.skip(reason)
        net = Network(n_hosts, profile)
        made.append(net)
        return net.start()

    yield make
    for net in made:
        net.close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A fresh session secret (mode 0600)."""
    return write_secret(tmp_path / "session.key")


@pytest.fixture
def job() -> Path:
    """Path of the party script (share, multiply, reveal; see ``scripts/mpc_job.py``)."""
    return JOB


@pytest.fixture(scope="session")
def job_expected() -> Callable[[int], dict[str, list[float]]]:
    """``expected(n)``: what the party script computes for ``n`` parties, in plaintext torch."""
    spec = importlib.util.spec_from_file_location("e2e_mpc_job", JOB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only; main() runs under __main__
    return module.expected  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def single_host_results() -> Iterator[Callable[[int], dict[str, list[float]]]]:
    """``results(n)``: the party script's result with ``crypten-lite launch -n n --dealer`` on
    this host (computed once per ``n`` and cached)."""
    cache: dict[int, dict[str, list[float]]] = {}
    tag = "single-host-reference"

    def results(n: int) -> dict[str, list[float]]:
        if n not in cache:
            proc = single_host(n, JOB, tag=tag, timeout_s=120.0)
            assert proc.popen.returncode == 0, proc.describe()
            cache[n] = parse_result(proc.stdout, 0, proc.describe())
        return cache[n]

    yield results
    kill_pids(pids_with_env(TAG_ENV, tag))
