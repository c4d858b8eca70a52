"""Parties on separate hosts: the multi-host CLI and the torchrun variables, over LAN and WAN.

Each party and the dealer runs in its own network namespace with its own address
(:mod:`tests.netns`), started the way an operator would start them on separate machines. The
party script (``scripts/mpc_job.py``) secret-shares one private vector per party, adds,
multiplies (Beaver triples from the dealer) and reveals. The results must equal the single-host
run of the same script (``crypten-lite launch -n N --dealer``):

* ``sum`` is linear, so it must be bit-for-bit equal;
* ``prod`` and ``matmul`` involve probabilistic truncation (±1 ulp per product, different in
  every run), so they must agree within ``TOL`` — and with plaintext torch within ``TOL``.

Afterwards no process of the session may remain, on any host.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from crypten_lite.config import Config
from tests.netns import TAG_ENV, MultiHostSession, Network, pids_with_env

# Products of values in [-2, 2) carry at most a few ulps of encoding and truncation error
# each (protocols/arithmetic.py); 64 ulps leaves room for a chain of N-1 <= 2 products.
TOL = 64 * 2.0 ** -Config().frac_bits


def _close(a: list[float], b: list[float], tol: float) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("world_size", "profile", "style"),
    [(2, "lan", "cli"), (3, "wan", "cli"), (2, "wan", "torchrun")],
    ids=["2p-lan-cli", "3p-wan-cli", "2p-wan-torchrun"],
)
def test_parties_on_separate_hosts(
    make_network: Callable[[int, str], Network],
    secret_file: Path,
    job: Path,
    single_host_results: Callable[[int], dict[str, list[float]]],
    job_expected: Callable[[int], dict[str, list[float]]],
    world_size: int,
    profile: str,
    style: str,
) -> None:
    reference = single_host_results(world_size)
    net = make_network(world_size + 1, profile)
    session = MultiHostSession(
        net,
        world_size,
        job,
        secret_file=secret_file,
        style=style,
        timeout_s=30.0,
        rendezvous_timeout_s=90.0,
    )
    session.start()
    codes = session.wait(180.0)
    assert codes == dict.fromkeys(session.ranks, 0), session.describe()

    # Every party revealed the same values ...
    results = [session.result(r) for r in range(world_size)]
    assert all(r == results[0] for r in results), session.describe()
    # ... equal to the single-host run (exactly where no truncation is involved) ...
    assert results[0]["sum"] == reference["sum"]
    for key in ("prod", "matmul"):
        assert _close(results[0][key], reference[key], TOL), (key, results[0], reference)
    # ... and to plaintext torch.
    plain = job_expected(world_size)
    for key, values in plain.items():
        assert _close(results[0][key], values, TOL), (key, results[0][key], values)

    # The parties reached each other at their own hosts' addresses.
    for rank in range(world_size):
        peers = re.search(r"PEERS (\{.*\})", session.procs[rank].stdout)
        assert peers, session.describe()
        for peer in session.ranks:
            if peer != rank:
                assert f"tcp://{net.hosts[peer].address}:" in peers[1], (rank, peers[1])

    assert net.leftover_pids() == {}
    assert pids_with_env(TAG_ENV, session.tag) == []
