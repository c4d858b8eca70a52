"""In-process communicator: collectives, CommStats counters, desync and timeout detection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from crypten_lite.config import Config, config_from_env
from crypten_lite.errors import (
    ConfigurationError,
    PartyFailedError,
    PartyTimeoutError,
    ProtocolError,
)
from crypten_lite.runtime.comm import CommStats, InProcessCommunicator, InProcessHub
from crypten_lite.runtime.wire import encode_header


def run(n: int, fn: Callable[[InProcessCommunicator], Any], timeout_s: float = 5.0) -> list[Any]:
    hub = InProcessHub(n)
    out: list[Any] = [None] * n

    def main(r: int) -> None:
        try:
            out[r] = fn(hub.communicator(r, timeout_s=timeout_s))
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            out[r] = exc
            hub.abort(f"party {r} failed")

    threads = [threading.Thread(target=main, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_collectives(n: int) -> None:
    def fn(c: InProcessCommunicator) -> Any:
        mine = torch.full((3,), c.rank + 1, dtype=torch.int64)
        total = c.all_reduce(mine, "sum")
        gathered = c.all_gather(mine, "ag")
        b = c.broadcast(mine if c.rank == 1 else None, 1, "bc")
        g = c.gather(mine, 0, "g")
        c.barrier()
        return total, gathered, b, g

    res = run(n, fn)
    for r, (total, gathered, b, g) in enumerate(res):
        assert total.tolist() == [n * (n + 1) // 2] * 3
        assert [int(t[0]) for t in gathered] == list(range(1, n + 1))
        assert b.tolist() == [2, 2, 2]
        assert (g is None) == (r != 0)


def test_stats_count_rounds_messages_and_payload_bytes() -> None:
    def fn(c: InProcessCommunicator) -> CommStats:
        c.exchange(torch.zeros(10, dtype=torch.int64), "beaver.mul#1")
        c.exchange(torch.zeros(4, dtype=torch.int64), "beaver.mul#2")
        c.all_reduce(torch.zeros(2, dtype=torch.int32), "other")
        return c.stats

    for s in run(3, fn):
        assert s.total.rounds == 3
        assert s.total.messages_sent == 6 and s.total.messages_received == 6
        assert s.total.bytes_sent == 2 * (80 + 32 + 8) == s.total.bytes_received
        mul = s.by_tag["beaver.mul"]  # "#..." suffixes are folded into one tag
        assert mul.rounds == 2 and mul.bytes_sent == 2 * (80 + 32)
        assert s.header_bytes > 0
        assert "beaver.mul" in s.table() and "TOTAL" in s.table()
        snap = s.snapshot()
        s.reset()
        assert s.total.rounds == 0 and snap.total.rounds == 3


def test_desynchronised_parties_fail_clearly() -> None:
    def fn(c: InProcessCommunicator) -> Any:
        return c.exchange(torch.zeros(1), "beaver.mul" if c.rank == 0 else "trunc")

    res = run(2, fn)
    errors = [r for r in res if isinstance(r, ProtocolError)]
    assert errors and "desynchronised" in str(errors[0])
    assert "beaver.mul" in str(errors[0]) and "trunc" in str(errors[0])


def test_timeout_names_party_tag_and_peer() -> None:
    def fn(c: InProcessCommunicator) -> Any:
        if c.rank == 1:
            return c.recv(0, "open")
        return None

    res = run(2, fn, timeout_s=0.2)
    assert isinstance(res[1], PartyTimeoutError)
    assert "party 1" in str(res[1]) and "'open'" in str(res[1]) and "party 0" in str(res[1])


def test_abort_wakes_waiting_parties() -> None:
    def fn(c: InProcessCommunicator) -> Any:
        if c.rank == 0:
            raise RuntimeError("boom")
        return c.recv(0, "x")

    res = run(2, fn, timeout_s=10)
    assert isinstance(res[1], PartyFailedError)


def test_injected_garbage_and_wrong_sender_are_rejected() -> None:
    hub = InProcessHub(2)
    c0, c1 = hub.communicator(0, timeout_s=1), hub.communicator(1, timeout_s=1)
    c0.inject_raw(1, b"garbage-header-bytes", b"")
    with pytest.raises(ProtocolError):
        c1.recv(0, "x")
    c0.inject_raw(1, encode_header(0, 5, "x", torch.int64, (1,)), bytes(8))
    with pytest.raises(ProtocolError, match="desynchronised"):
        c1.recv(0, "x")


def test_bad_peers_and_ranks() -> None:
    hub = InProcessHub(2)
    c0 = hub.communicator(0, timeout_s=1)
    with pytest.raises(ValueError):
        c0.send(0, torch.zeros(1), "self")
    with pytest.raises(ValueError):
        c0.send(5, torch.zeros(1), "nobody")
    with pytest.raises(ValueError):
        c0.broadcast(torch.zeros(1), 7, "bc")
    with pytest.raises(TypeError):
        c0.send(1, [1, 2], "list")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        hub.communicator(2, timeout_s=1)


def test_max_queued_bytes_reads_its_variable_and_defaults_to_the_message_bound() -> None:
    """``Config.max_queued_bytes`` (the ZeroMQ inbox bound per peer; its effect over real
    processes: tests/multiprocess/test_failures.py)."""
    assert Config().queued_bytes_bound == Config().max_message_bytes
    assert Config(max_message_bytes=4096).queued_bytes_bound == 4096
    cfg = config_from_env({"CRYPTEN_LITE_MAX_QUEUED_BYTES": str(1 << 20)})
    assert cfg.max_queued_bytes == cfg.queued_bytes_bound == 1 << 20
    assert config_from_env(cfg.to_env()) == cfg
    with pytest.raises(ConfigurationError, match="max_queued_bytes"):
        Config(max_queued_bytes=100)
    with pytest.raises(ConfigurationError, match="CRYPTEN_LITE_MAX_QUEUED_BYTES"):
        config_from_env({"CRYPTEN_LITE_MAX_QUEUED_BYTES": "lots"})
