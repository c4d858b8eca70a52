"""Failures over real processes: desynchronised ops, a crashing party, malformed and
unauthenticated traffic injected into a party's socket. Nothing may crash or hang."""

from __future__ import annotations

import re
import time

import pytest
import torch
import zmq
from zmq.utils.monitor import parse_monitor_message

import crypten_lite
from crypten_lite.config import Config
from crypten_lite.errors import PartyFailedError, PartyTimeoutError, ProtocolError
from crypten_lite.launcher.api import launch
from crypten_lite.launcher.security import rank_name
from crypten_lite.runtime.wire import encode_header

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.filterwarnings("ignore:launch\\(dealer=False\\):RuntimeWarning"),
]


def desync() -> None:
    party = crypten_lite.get_party()
    tag = "beaver.mul" if party.rank == 0 else "trunc.pair"
    party.comm.exchange(torch.zeros(3, dtype=torch.int64), tag)


def test_desynchronised_parties_fail_naming_both_ops() -> None:
    with pytest.raises(PartyFailedError) as info:
        launch(desync, 2, dealer=False, config=Config(timeout_s=10.0), timeout_s=60.0, quiet=True)
    message = str(info.value)
    assert "desynchronised" in message
    assert "'beaver.mul'" in message and "'trunc.pair'" in message
    assert "ProtocolError" in message


def crash_party_one() -> None:
    party = crypten_lite.get_party()
    if party.rank == 1:
        raise ValueError("party one gives up")
    party.comm.recv(1, "never.sent")  # would wait the full 60 s timeout if not stopped


def test_crashing_party_is_named_with_its_traceback_and_the_rest_stops() -> None:
    start = time.monotonic()
    with pytest.raises(PartyFailedError) as info:
        launch(
            crash_party_one,
            2,
            dealer=False,
            config=Config(timeout_s=60.0),
            timeout_s=90.0,
            quiet=True,
        )
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert message.startswith("party 1 failed (exit code 1)")
    assert "Traceback (most recent call last)" in message
    assert "in crash_party_one" in message
    assert "ValueError: party one gives up" in message
    assert elapsed < 40.0, f"party 0 was not stopped promptly ({elapsed:.1f} s)"


# Each entry: (frames injected into party 0's socket, text its ProtocolError must contain).
_GOOD = encode_header(1, 0, "x", torch.int64, (2,))
MALFORMED: list[tuple[list[bytes], str]] = [
    ([_GOOD], "one frame"),
    ([b"XX" + _GOOD[2:], bytes(16)], "magic"),
    ([_GOOD[:10], bytes(16)], "truncated"),
    ([b"junk", b"more", b"frames"], "truncated"),
    ([_GOOD, bytes(15)], "15-byte payload"),
    ([_GOOD, bytes(16), b"extra"], "extra frames"),
    ([encode_header(1, 0, "x", torch.int64, (1 << 40,)), b""], "more than the limit"),
    ([encode_header(5, 0, "x", torch.int64, (2,)), bytes(16)], "rank 5"),
    ([encode_header(0, 0, "x", torch.int64, (2,)), bytes(16)], "rank 0"),
]


def inject_malformed() -> list[str]:
    """Party 1 injects bad messages into party 0's socket through raw ZeroMQ sockets."""
    party = crypten_lite.get_party()
    comm = party.comm
    if party.rank == 1:
        ctx = zmq.Context()
        rogue = ctx.socket(zmq.PUSH)
        rogue.connect(comm.peer_endpoints[0])  # type: ignore[attr-defined]
        for frames, _ in MALFORMED:
            rogue.send_multipart(frames)
        # Larger than ZMQ_MAXMSGSIZE (max_message_bytes): libzmq drops the connection.
        oversized = ctx.socket(zmq.PUSH)
        oversized.connect(comm.peer_endpoints[0])  # type: ignore[attr-defined]
        oversized.send_multipart([_GOOD, bytes(2 << 20)])
        comm.recv(0, "ack")  # party 0 has seen every bad message
        comm.send(0, torch.tensor([7, 8]), "x")
        ctx.destroy(linger=0)
        return []
    seen = []
    for _ in MALFORMED:
        try:
            comm.recv(1, "x")
            seen.append("no error")
        except ProtocolError as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
    comm.timeout_s = 1.0
    try:
        comm.recv(1, "x")
        seen.append("no error")
    except PartyTimeoutError as exc:  # the oversized message never arrives
        seen.append(f"{type(exc).__name__}: {exc}")
    comm.timeout_s = 20.0
    comm.send(1, torch.zeros((), dtype=torch.uint8), "ack")
    seen.append(str(comm.recv(1, "x").tolist()))  # the socket still works
    return seen


def test_malformed_frames_raise_protocol_error_and_the_socket_survives() -> None:
    config = Config(timeout_s=20.0, max_message_bytes=1 << 20)
    seen = launch(inject_malformed, 2, dealer=False, config=config, timeout_s=60.0, quiet=True)[0]
    assert len(seen) == len(MALFORMED) + 2
    for (_, expected), got in zip(MALFORMED, seen, strict=False):
        assert got.startswith("ProtocolError: party 0: malformed message"), got
        assert re.search(r"'x' #\d+ from party 1", got), got
        assert expected in got, (expected, got)
    assert re.match(r"PartyTimeoutError: party 0: no 'x' #\d+ from party 1 within 1 s", seen[-2])
    assert seen[-1] == "[7, 8]"


def _wait_handshake_outcome(monitor: zmq.Socket[bytes], bound_s: float = 30.0) -> None:
    """Read socket events until the handshake's outcome (a bound for broken runs only)."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if monitor.poll(50):
            event = parse_monitor_message(monitor.recv_multipart())["event"]
            if event & (_HANDSHAKE_EVENTS | zmq.EVENT_DISCONNECTED):
                return
    raise AssertionError("no handshake outcome within the bound")


def rogue_clients() -> dict[str, int]:
    """Party 1 plays an attacker without the secret against party 0's CURVE socket."""
    party = crypten_lite.get_party()
    comm = party.comm
    if party.rank == 1:
        endpoint = comm.peer_endpoints[0]  # type: ignore[attr-defined]
        # Public keys are not secret: assume the attacker learned party 0's.
        server_key = comm._security.public_key(rank_name(0))  # type: ignore[attr-defined]
        forged = [
            encode_header(1, 0, "x", torch.int64, (1,)),
            torch.tensor([666]).numpy().tobytes(),
        ]
        ctx = zmq.Context()
        plain = ctx.socket(zmq.PUSH)  # no CURVE at all
        own_keys = ctx.socket(zmq.PUSH)  # CURVE with a key pair not derived from the secret
        own_keys.curve_publickey, own_keys.curve_secretkey = zmq.curve_keypair()
        own_keys.curve_serverkey = server_key
        monitors = [sock.get_monitor_socket() for sock in (plain, own_keys)]
        for sock in (plain, own_keys):
            sock.connect(endpoint)
            sock.send_multipart(forged)
        # Wait for each handshake's outcome (the event), so a forged message, were it admitted,
        # would have gone out before the real one below.
        for monitor in monitors:
            _wait_handshake_outcome(monitor)
        comm.send(0, torch.tensor([42]), "x")
        comm.barrier()
        ctx.destroy(linger=0)
        return {}
    value = int(comm.recv(1, "x")[0])
    comm.barrier()
    return {"value": value, "denied": comm._security.denied}  # type: ignore[attr-defined]


def test_rogue_clients_without_the_secret_cannot_inject_over_tcp() -> None:
    result = launch(
        rogue_clients,
        2,
        dealer=False,
        transport="tcp",
        config=Config(timeout_s=20.0),
        timeout_s=60.0,
        quiet=True,
    )[0]
    assert result["value"] == 42  # the real message, not the forged 666
    assert result["denied"] >= 1  # the ZAP handler refused the foreign key


def flood_ahead() -> None:
    """Party 1 runs ahead of the protocol with 512 KiB messages for party 0, which waits for
    party 2 (who waits too): party 0 may hold only ``max_message_bytes`` of them."""
    party = crypten_lite.get_party()
    comm = party.comm
    if party.rank == 1:
        for _ in range(8):
            comm.send(0, torch.zeros(1 << 16, dtype=torch.int64), "flood")
    comm.recv(2 if party.rank == 0 else 0, "never.sent")


@pytest.mark.parametrize(
    "bound",
    [{"max_message_bytes": 1 << 20}, {"max_queued_bytes": 1 << 20}],
    ids=["from max_message_bytes", "Config.max_queued_bytes"],
)
def test_a_peer_past_its_byte_bound_ends_the_session_with_a_clear_error(
    bound: dict[str, int],
) -> None:
    with pytest.raises(PartyFailedError) as info:
        launch(
            flood_ahead,
            3,
            dealer=False,
            config=Config(timeout_s=60.0, **bound),
            timeout_s=120.0,
            quiet=True,
        )
    message = str(info.value)
    assert "party 0 failed" in message
    assert re.search(r"party 0: party 1 sent \d+ bytes ahead of the protocol", message), message
    assert f"bound of {1 << 20} bytes queued per peer" in message
