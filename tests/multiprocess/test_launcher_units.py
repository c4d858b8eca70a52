"""In-process checks of the launcher's parts: value codec, key derivation, rendezvous rules,
environment parsing and ``launch()`` argument checks. No child processes, so they are fast."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
import torch

from crypten_lite.config import Config
from crypten_lite.errors import (
    AuthenticationError,
    ConfigurationError,
    LaunchError,
    PartyTimeoutError,
    ProtocolError,
)
from crypten_lite.launcher.api import function_reference, launch
from crypten_lite.launcher.codec import decode_value, encode_value
from crypten_lite.launcher.connect import connect_from_env
from crypten_lite.launcher.rendezvous import Coordinator, rendezvous
from crypten_lite.launcher.security import COORDINATOR, Security, load_secret, rank_name
from crypten_lite.launcher.session import ProcessEnv, intra_op_threads

SECRET = b"0123456789abcdef0123456789abcdef"


# ----------------------------------------------------------------- codec
def test_codec_round_trips_the_documented_types() -> None:
    value = {
        "none": None,
        "flags": [True, False],
        1: (2, 3.5, float("inf"), "text"),
        "tensors": [torch.arange(6).reshape(2, 3), torch.tensor(1.5, dtype=torch.bfloat16)],
        "empty": torch.empty(0, 4, dtype=torch.bool),
    }
    back = decode_value(encode_value(value))
    assert back.keys() == value.keys()
    assert back[1] == (2, 3.5, float("inf"), "text")
    assert back["flags"] == [True, False] and back["none"] is None
    for got, want in zip(back["tensors"], value["tensors"], strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert back["empty"].shape == (0, 4) and back["empty"].dtype == torch.bool


@pytest.mark.parametrize(
    "bad", [object(), {1, 2}, [b"bytes"], {(1, 2): 3}, torch.zeros(2, dtype=torch.complex64)]
)
def test_codec_refuses_what_would_need_pickle(bad: Any) -> None:
    with pytest.raises(TypeError, match="args"):
        encode_value(("ok", bad), where="args")


@pytest.mark.parametrize("data", [b"", b"XXXX" + bytes(8), b"CLV1" + (100).to_bytes(8, "little")])
def test_codec_rejects_malformed_files(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_value(data)


# ----------------------------------------------------------------- keys and secrets
def test_keys_are_derived_from_the_secret_and_differ_per_rank() -> None:
    one, again, other = Security(SECRET, 2), Security(SECRET, 2), Security(SECRET[::-1], 2)
    names = [rank_name(0), rank_name(1), rank_name(2), COORDINATOR]
    keys = [one.public_key(n) for n in names]
    assert len(set(keys)) == len(names)
    assert keys == [again.public_key(n) for n in names]
    assert not set(keys) & {other.public_key(n) for n in names}


def test_short_or_missing_secrets_are_refused(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="at least 16"):
        load_secret(path=None, value="short")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_secret(path=tmp_path / "missing", value=None)
    (tmp_path / "key").write_text(" " + "k" * 20 + "\n")
    (tmp_path / "key").chmod(0o600)
    assert load_secret(path=tmp_path / "key", value=None) == b"k" * 20


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_a_secret_file_others_can_access_is_refused_unless_allowed(
    tmp_path: Any, mode: int
) -> None:
    """As ssh does for a private key: anyone who can read the file can join the session."""
    key = tmp_path / "key"
    key.write_text("k" * 32)
    key.chmod(mode)
    with pytest.raises(ConfigurationError, match=rf"mode {mode:04o}.*chmod 600"):
        load_secret(path=key, value=None)
    assert load_secret(path=key, value=None, allow_shared_file=True) == b"k" * 32
    key.chmod(0o400)
    assert load_secret(path=key, value=None) == b"k" * 32


def test_the_secret_reaches_a_child_through_a_pipe_once(tmp_path: Any) -> None:
    """``CRYPTEN_LITE_SECRET_FD``: read once (the pipe is consumed), remembered afterwards."""
    read_end, write_end = os.pipe()
    os.write(write_end, SECRET)
    os.close(write_end)
    env = {"RANK": "0", "WORLD_SIZE": "2", "CRYPTEN_LITE_COORDINATOR": "ipc:///x"}
    process = ProcessEnv.from_env({**env, "CRYPTEN_LITE_SECRET_FD": str(read_end)})
    assert process.load_secret() == SECRET
    assert process.load_secret() == SECRET
    with pytest.raises(OSError):
        os.fstat(read_end)  # closed after reading


# ----------------------------------------------------------------- rendezvous
def _hello(coordinator: Coordinator, security: Security, rank: int, **overrides: Any) -> Any:
    kwargs = {
        "coordinator": coordinator.endpoint,
        "rank": rank,
        "world_size": 2,
        "has_dealer": False,
        "transport": "tcp",
        "endpoint": f"tcp://127.0.0.1:{1000 + rank}",
        "security": security,
        "timeout_s": 2.0,
        **overrides,
    }
    try:
        return rendezvous(**kwargs)
    except Exception as exc:  # noqa: BLE001 - returned for inspection
        return exc


def _run_hellos(security: Security, calls: list[dict[str, Any]]) -> list[Any]:
    coordinator = Coordinator(
        bind="tcp://127.0.0.1:*",
        world_size=2,
        has_dealer=False,
        transport="tcp",
        security=Security(SECRET, 2),
        timeout_s=2.0,
    )
    coordinator.start()
    results: list[Any] = [None] * len(calls)

    def one(i: int) -> None:
        results[i] = _hello(coordinator, security, **calls[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    coordinator.close()
    return results


def test_rendezvous_hands_out_the_table() -> None:
    results = _run_hellos(Security(SECRET, 2), [{"rank": 0}, {"rank": 1}])
    assert results[0] == results[1] == {0: "tcp://127.0.0.1:1000", 1: "tcp://127.0.0.1:1001"}


def test_rendezvous_rejects_a_different_world_size() -> None:
    results = _run_hellos(Security(SECRET, 3), [{"rank": 0}, {"rank": 1, "world_size": 3}])
    assert any(isinstance(r, LaunchError) for r in results)
    message = next(str(r) for r in results if isinstance(r, LaunchError))
    assert "world_size 3" in message and "the coordinator with 2" in message


def test_rendezvous_rejects_a_rank_that_arrives_twice() -> None:
    results = _run_hellos(Security(SECRET, 2), [{"rank": 1}, {"rank": 1}])
    assert all(isinstance(r, LaunchError) for r in results)
    assert "party 1 arrived twice" in str(results[0])


def test_rendezvous_names_the_missing_party() -> None:
    (result,) = _run_hellos(Security(SECRET, 2), [{"rank": 0}])
    assert isinstance(result, PartyTimeoutError)
    assert "party 1 did not arrive within 2 s" in str(result)


def test_rendezvous_with_another_secret_fails_authentication() -> None:
    (result,) = _run_hellos(Security(b"another secret of 32 bytes......", 2), [{"rank": 0}])
    assert isinstance(result, AuthenticationError)
    assert "session secret differs" in str(result)


# ----------------------------------------------------------------- environment and API checks
def test_connect_outside_a_launched_process_explains_itself() -> None:
    with pytest.raises(ConfigurationError, match="not started by `crypten-lite launch`"):
        connect_from_env(Config(), environ={})


def test_process_env_round_trips_and_validates() -> None:
    env = ProcessEnv(
        rank=2, world_size=2, role="dealer", coordinator="ipc:///x", has_dealer=True, run_dir="/r"
    )
    assert ProcessEnv.from_env(env.to_env()) == env
    with pytest.raises(ConfigurationError, match="RANK=2"):
        ProcessEnv.from_env({**env.to_env(), "CRYPTEN_LITE_ROLE": "party"})


def test_threads_split_the_cores() -> None:
    assert intra_op_threads(10_000) == 1
    assert intra_op_threads(1, override=3) == 3


def _module_level() -> None:
    """A function other processes can import."""


def test_launch_needs_an_importable_function() -> None:
    ref = function_reference(_module_level)
    assert ref["qualname"] == "_module_level" and ref["file"].endswith("test_launcher_units.py")
    with pytest.raises(TypeError, match="module level"):
        launch(lambda: None, 2)

    def nested() -> None:
        pass

    with pytest.raises(TypeError, match="module level"):
        launch(nested, 2)
    with pytest.raises(ConfigurationError, match="at least 2"):
        launch(_module_level, 1)


# ----------------------------------------------------------------- memory bound per peer
def test_a_peer_running_ahead_past_the_byte_bound_is_named() -> None:
    """Party 1 floods party 0 while party 0 waits for party 2: party 0 holds at most
    ``max_queued_bytes`` of party 1's messages, then fails naming party 1 and the bound."""
    from crypten_lite.launcher.zmq_comm import ZmqCommunicator

    def comm(rank: int, **kw: Any) -> ZmqCommunicator:
        return ZmqCommunicator(
            rank, 3, bind="tcp://127.0.0.1:*", security=Security(None, 3), timeout_s=20.0, **kw
        )

    victim = comm(0, max_message_bytes=4096, max_queued_bytes=10_000)
    others = [comm(1), comm(2)]
    comms = [victim, *others]
    table = {c.rank: c.endpoint for c in comms}
    try:
        for c in comms:
            c.connect_peers(table)
        block = torch.zeros(500, dtype=torch.int64)  # 4000 bytes: under the message limit
        others[0].send(0, block, "flood")
        others[0].send(0, block, "flood")  # 8000 bytes queued: within the bound
        others[0].send(0, block, "flood")  # 12000: past it
        # Party 2 sends nothing, so party 0 reads (and must hold) the whole flood while it
        # waits: the error does not depend on which connection libzmq serves first.
        with pytest.raises(ProtocolError) as info:
            victim.recv(2, "late")
        message = str(info.value)
        assert "party 0: party 1 sent 12000 bytes ahead of the protocol" in message
        assert "'late' #0 from party 2" in message and "bound of 10000 bytes" in message
    finally:
        for c in comms:
            c.abort()


def test_messages_within_the_byte_bound_are_delivered_in_order() -> None:
    from crypten_lite.launcher.zmq_comm import ZmqCommunicator

    comms = [
        ZmqCommunicator(
            r,
            3,
            bind="tcp://127.0.0.1:*",
            security=Security(None, 3),
            timeout_s=20.0,
            max_message_bytes=4096,
            max_queued_bytes=8000,
        )
        for r in range(3)
    ]
    table = {c.rank: c.endpoint for c in comms}
    try:
        for c in comms:
            c.connect_peers(table)
        for i in range(2):
            comms[1].send(0, torch.full((500,), i, dtype=torch.int64), "ahead")
        comms[2].send(0, torch.ones(1, dtype=torch.int64), "x")
        assert comms[0].recv(2, "x").tolist() == [1]  # files party 1's 8000 bytes meanwhile
        assert [int(comms[0].recv(1, "ahead")[0]) for _ in range(2)] == [0, 1]
        comms[1].send(0, torch.full((500,), 2, dtype=torch.int64), "ahead")
        comms[2].send(0, torch.ones(1, dtype=torch.int64), "x")
        assert comms[0].recv(2, "x").tolist() == [1]  # the inbox was emptied: room again
    finally:
        for c in comms:
            c.abort()
