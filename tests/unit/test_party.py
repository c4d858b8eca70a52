"""Party set-up: agreement checks, pairwise streams, pseudo-random zero sharing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from crypten_lite.config import Config
from crypten_lite.errors import ConfigurationError, ProtocolError
from crypten_lite.runtime.comm import InProcessHub
from crypten_lite.runtime.party import Party, run_threads


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_przs_sums_to_zero_and_is_fresh(
    world_size: int, dealer: str, run_parties: Callable[..., list[Any]]
) -> None:
    def fn(party: Party) -> tuple[torch.Tensor, torch.Tensor, bytes]:
        return party.przs((3, 4)), party.przs((3, 4)), repr(party).encode()

    res = run_parties(fn, world_size, dealer=dealer)
    first = sum(r[0] for r in res)
    second = sum(r[1] for r in res)
    assert torch.equal(first, torch.zeros(3, 4, dtype=torch.int64))
    assert torch.equal(second, torch.zeros(3, 4, dtype=torch.int64))
    assert not torch.equal(res[0][0], res[0][1])  # fresh each call
    assert all(bool((r[0] != 0).all()) for r in res)


def test_pair_streams_agree(run_parties: Callable[..., list[Any]]) -> None:
    def fn(party: Party) -> dict[int, torch.Tensor]:
        return {p: party.pair_prg(p).random_int64((4,)) for p in range(3) if p != party.rank}

    res = run_parties(fn, 3)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert torch.equal(res[i][j], res[j][i])
    assert not torch.equal(res[0][1], res[0][2])


def test_mismatched_config_is_a_protocol_error() -> None:
    hub = InProcessHub(2)
    errors: list[BaseException] = []

    def main(rank: int) -> None:
        try:
            Party.setup(
                hub.communicator(rank, timeout_s=5),
                Config(transport="inproc", dealer="tfp", frac_bits=16 if rank == 0 else 12),
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors and all(isinstance(e, ProtocolError) for e in errors)
    assert "frac_bits" in str(errors[0])


def test_run_threads_reraises_the_first_real_failure() -> None:
    def fn(party: Party) -> None:
        if party.rank == 1:
            raise KeyError("boom")
        party.comm.recv(1, "never")

    with pytest.raises(KeyError):
        run_threads(fn, 2, config=Config(transport="inproc", dealer="tfp", timeout_s=10))


def test_config_validation() -> None:
    with pytest.raises(ConfigurationError):
        Config(truncation="exact")
    with pytest.raises(ConfigurationError):
        Config(frac_bits=40)


def test_keep_freed_memory_is_idempotent() -> None:
    import sys

    from crypten_lite.runtime.party import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first
    if sys.platform.startswith("linux"):
        assert first
