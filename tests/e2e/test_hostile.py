"""Hostile input: random, truncated, oversized and replayed frames; a rogue host without the secret.

A party's receiving socket is the attack surface of a session: anything that can reach it can
send bytes. These tests check the promise of DESIGN.md §5 and ``crypten_lite.runtime.wire``:

* every malformed frame is refused with :class:`~crypten_lite.errors.ProtocolError` (never
  another exception, never a crash), and the socket stays usable afterwards;
* a header announcing a huge tensor is refused before anything is allocated, and a frame
  larger than ``max_message_bytes`` is dropped by libzmq before it is buffered (memory stays
  bounded);
* a replayed frame is a "parties desynchronised" error, not a second delivery;
* over TCP, a process without the session secret cannot complete the CurveZMQ handshake with
  the coordinator or a party, so it can neither join nor inject (tested from another host).

The frame fuzzers talk to plaintext sockets on purpose (``Security(None, ...)``, as behind IPC
or after a handshake), so that the bytes actually reach the decoder.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import zmq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from crypten_lite.errors import PartyTimeoutError, ProtocolError
from crypten_lite.launcher.security import Security, rank_name
from crypten_lite.launcher.zmq_comm import ZmqCommunicator
from crypten_lite.runtime.comm import InProcessHub
from crypten_lite.runtime.wire import (
    MAGIC,
    WIRE_VERSION,
    decode_header,
    encode_header,
    tensor_payload,
)
from tests.netns import TAG_ENV, MultiHostSession, Network, clean_env, pids_with_env

MAX_BYTES = 4096  # the victim's max_message_bytes: small, so fuzzing reaches the limit
RECV_TIMEOUT_S = 0.3
TAG = "fuzz"
WIRE_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float32, torch.float16]
ROGUE = Path(__file__).resolve().parent / "scripts" / "rogue.py"


# --------------------------------------------------------------------------- frame strategies
@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A header that is valid, or nearly so: wrong sender or tag, odd shapes. Its sequence
    number is 0; :func:`_with_seq` sets the one the receiver expects (or one near it)."""
    dtype = draw(st.sampled_from(WIRE_DTYPES))
    shape = draw(st.lists(st.integers(0, 10), max_size=3))
    return encode_header(
        draw(st.sampled_from([1, 1, 1, 0, 2, 65535])),
        0,
        draw(st.sampled_from([TAG, TAG, TAG, "beaver.mul", "", "fuzz\u00e9"])),
        dtype,
        tuple(shape),
    )


@st.composite
def corrupt(draw: st.DrawFn, header: bytes) -> bytes:
    """``header`` truncated, extended, with a byte changed, or with a field forged."""
    kind = draw(st.sampled_from(["keep"] * 4 + ["truncate", "extend", "flip", "version", "ndim"]))
    if kind == "truncate":
        return header[: draw(st.integers(0, len(header) - 1))]
    if kind == "extend":
        return header + draw(st.binary(min_size=1, max_size=16))
    if kind == "flip":
        i = draw(st.integers(0, len(header) - 1))
        return header[:i] + bytes([header[i] ^ draw(st.integers(1, 255))]) + header[i + 1 :]
    if kind == "version":
        return header[:2] + bytes([draw(st.integers(0, 255))]) + header[3:]
    if kind == "ndim":
        return header[:6] + bytes([draw(st.integers(0, 255))]) + header[7:]
    return header


@st.composite
def huge_header(draw: st.DrawFn) -> bytes:
    """A well-formed header announcing far more payload than the limit (up to ~2**63 bytes)."""
    dims = draw(st.lists(st.integers(1 << 10, (1 << 62) - 1), min_size=1, max_size=3))
    return encode_header(1, 0, TAG, torch.int64, tuple(dims))


@st.composite
def messages(draw: st.DrawFn) -> tuple[list[bytes], int | None]:
    """One multipart message as an attacker might send it, and the offset of its sequence
    number from the one the receiver expects (``None``: leave the bytes alone)."""
    kind = draw(st.sampled_from(["garbage"] + ["near-valid"] * 3 + ["huge", "frames"]))
    if kind == "garbage":
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=4)), None
    header = draw(huge_header()) if kind == "huge" else draw(corrupt(draw(headers())))
    try:
        announced = decode_header(header, 1 << 62).nbytes
    except ProtocolError:
        announced = draw(st.integers(0, 64))
    size = draw(st.sampled_from([announced, announced, announced + 1, max(0, announced - 1), 0]))
    size = min(size, MAX_BYTES // 2)
    frames = [header, draw(st.binary(min_size=size, max_size=size))]
    if kind == "frames":
        frames = draw(st.sampled_from([frames[:1], frames + [b"x"], frames + [b"", b""]]))
    return frames, draw(st.sampled_from([0, 0, 0, 1, -1, 1 << 40]))


def _with_seq(frames: list[bytes], offset: int | None, expected: int) -> list[bytes]:
    """Set the header's sequence number to ``expected + offset`` (when it has that field)."""
    header = frames[0]
    if offset is None or len(header) < 16 or header[:2] != MAGIC:
        return frames
    seq = (expected + offset) % (1 << 64)
    return [header[:8] + struct.pack("<Q", seq) + header[16:], *frames[1:]]


def acceptable(frames: list[bytes], expected_seq: int) -> bool:
    """The oracle: would a correct receiver accept this as party 1's next ``fuzz`` message?"""
    if len(frames) != 2 or any(len(f) > MAX_BYTES for f in frames):
        return False
    try:
        header = decode_header(frames[0], MAX_BYTES)
    except ProtocolError:
        return False
    return (
        header.sender == 1
        and header.seq == expected_seq
        and header.tag == TAG
        and len(frames[1]) == header.nbytes
    )


def _is_payload(got: torch.Tensor, frames: list[bytes]) -> bool:
    """Whether ``got`` is exactly the tensor the frames describe (bytes compared: NaN-safe)."""
    header = decode_header(frames[0], MAX_BYTES)
    return (
        got.dtype == header.dtype
        and tuple(got.shape) == header.shape
        and bytes(tensor_payload(got)) == frames[1]
    )


def _reason(message: str) -> str:
    """The kind of a refusal, for hypothesis' statistics (``--hypothesis-show-statistics``)."""
    for key in (
        "desynchronised",
        "limit",
        "within",
        "one frame",
        "extra frames",
        "claiming",
        "truncated",
        "magic",
        "version",
        "dtype",
        "dimensions",
        "header is",
        "payload",
        "UTF-8",
        "negative",
    ):
        if key in message:
            return key
    return message[:60]


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# --------------------------------------------------------------------------- in-process decoder
@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(messages(), min_size=1, max_size=8))
def test_inprocess_decoder_refuses_hostile_frames(
    batch: list[tuple[list[bytes], int | None]],
) -> None:
    """``inject_raw`` puts raw bytes on party 0's queue: the decoding path without sockets."""
    hub = InProcessHub(2)
    victim = hub.communicator(0, timeout_s=0.05, max_message_bytes=MAX_BYTES)
    attacker = hub.communicator(1, timeout_s=0.05, max_message_bytes=MAX_BYTES)
    seq = 0
    for raw, offset in batch:
        frames = _with_seq(raw, offset, seq)
        if len(frames) != 2:
            continue  # the in-process queue carries (header, payload) pairs only
        attacker.inject_raw(0, frames[0], frames[1])
        if acceptable(frames, seq):
            got = victim.recv(1, TAG)
            assert _is_payload(got, frames)
            seq += 1
        else:
            with pytest.raises(ProtocolError):
                victim.recv(1, TAG)


# --------------------------------------------------------------------------- ZeroMQ sockets
class _Victim:
    """Party 0 of a 2-party plaintext ZeroMQ session on loopback, and a raw attacker socket."""

    def __init__(self) -> None:
        security = Security(None, 2)
        self.comm = ZmqCommunicator(
            0,
            2,
            bind="tcp://127.0.0.1:*",
            security=security,
            timeout_s=RECV_TIMEOUT_S,
            max_message_bytes=MAX_BYTES,
        )
        self.peer = ZmqCommunicator(
            1, 2, bind="tcp://127.0.0.1:*", security=Security(None, 2), timeout_s=5.0
        )
        self.comm.connect_peers({0: self.comm.endpoint, 1: self.peer.endpoint})
        self.peer.connect_peers({0: self.comm.endpoint, 1: self.peer.endpoint})
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.ctx.setsockopt(zmq.LINGER, 0)
        self.seq = 0

    def attacker(self) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.PUSH)
        sock.connect(self.comm.endpoint)
        return sock

    def close(self) -> None:
        self.comm.abort()
        self.peer.abort()
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def victim() -> Iterator[_Victim]:
    v = _Victim()
    yield v
    v.close()


def _deliver(
    victim: _Victim, frames: list[bytes], record: Callable[[str], None] = lambda _: None
) -> None:
    """Send one multipart message from a fresh connection; check the victim's verdict.

    ``record`` receives the verdict (hypothesis' ``event``, for its statistics).
    """
    sock = victim.attacker()
    try:
        sock.send_multipart(frames)
        if acceptable(frames, victim.seq):
            record("accepted")
            got = victim.comm.recv(1, TAG)
            victim.seq += 1
            assert _is_payload(got, frames)
        else:
            with pytest.raises(ProtocolError) as info:
                victim.comm.recv(1, TAG)
            record(f"refused: {_reason(str(info.value))}")
            if any(len(f) > MAX_BYTES for f in frames):
                # libzmq dropped the oversized frame unread: nothing arrives.
                assert isinstance(info.value, PartyTimeoutError)
    finally:
        sock.close(linger=0)


@pytest.mark.timeout(180)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages())
def test_socket_refuses_hostile_frames(
    victim: _Victim, message: tuple[list[bytes], int | None]
) -> None:
    """Random, truncated, forged and mis-framed messages on a party's TCP socket."""
    frames, offset = message
    _deliver(victim, _with_seq(frames, offset, victim.seq), event)


def _assert_in_sync(victim: _Victim) -> None:
    """A well-formed next message is received correctly: the socket is usable and in sync."""
    t = torch.arange(5, dtype=torch.int64)
    frames = [encode_header(1, victim.seq, TAG, t.dtype, (5,)), t.numpy().tobytes()]
    _deliver(victim, frames)


@pytest.mark.timeout(60)
def test_socket_survives_fuzzing_and_stays_in_sync(victim: _Victim) -> None:
    """After the fuzzing above, the next legitimate message still gets through."""
    _assert_in_sync(victim)


@pytest.mark.timeout(60)
def test_huge_announcement_is_refused_before_allocation(victim: _Victim) -> None:
    """A 16-byte header may not make the receiver allocate 2**63 bytes (or anything)."""
    before = _rss_bytes()
    for dims in [(1 << 60,), (1 << 31, 1 << 31), (1 << 20,) * 3]:
        frames = [encode_header(1, victim.seq, TAG, torch.int64, dims), b"\0" * 8]
        sock = victim.attacker()
        sock.send_multipart(frames)
        with pytest.raises(ProtocolError, match="more than the limit"):
            victim.comm.recv(1, TAG)
        sock.close(linger=0)
    assert _rss_bytes() - before < 16 << 20


@pytest.mark.timeout(60)
def test_oversized_frame_is_dropped_unbuffered(victim: _Victim) -> None:
    """A 64 MiB frame to a party whose limit is 4 KiB: dropped by libzmq, memory bounded."""
    blob = bytearray(64 << 20)  # allocated before the baseline: only the victim's growth counts
    header = encode_header(1, victim.seq, TAG, torch.uint8, (len(blob),))
    before = _rss_bytes()
    sock = victim.attacker()
    sock.send(header, zmq.SNDMORE)
    sock.send(memoryview(blob), copy=False)
    with pytest.raises(ProtocolError):
        victim.comm.recv(1, TAG)
    sock.close(linger=0)
    assert _rss_bytes() - before < 32 << 20
    _assert_in_sync(victim)  # ... and the socket still works


@pytest.mark.timeout(60)
def test_replayed_frame_is_refused(victim: _Victim) -> None:
    """A captured frame sent again is a desynchronisation error naming both sequence numbers."""
    t = torch.tensor([1, 2, 3], dtype=torch.int64)
    frames = [encode_header(1, victim.seq, TAG, t.dtype, (3,)), t.numpy().tobytes()]
    _deliver(victim, frames)  # accepted once
    sock = victim.attacker()
    sock.send_multipart(frames)  # the replay
    with pytest.raises(ProtocolError, match=rf"desynchronised.*#{victim.seq}.*#{victim.seq - 1}"):
        victim.comm.recv(1, TAG)
    sock.close(linger=0)


@pytest.mark.timeout(60)
def test_received_empty_tensor_can_be_sent_on(victim: _Victim) -> None:
    """Whatever a peer sends and the receiver accepts must be usable like any tensor.

    Regression: empty tensors used to arrive with zero strides (from numpy), and
    ``tensor_payload`` then raised ``RuntimeError`` when a party sent them on.
    """
    sock = victim.attacker()
    try:
        sock.send_multipart([encode_header(1, victim.seq, TAG, torch.int64, (0,)), b""])
        got = victim.comm.recv(1, TAG)
        victim.seq += 1
    finally:
        sock.close(linger=0)
    assert bytes(tensor_payload(got)) == b""


def test_magic_and_version_are_checked() -> None:
    """Sanity of the oracle's assumptions about the header layout."""
    raw = encode_header(1, 0, TAG, torch.int64, (1,))
    assert raw[:2] == MAGIC and raw[2] == WIRE_VERSION
    forged = raw[:2] + bytes([WIRE_VERSION + 1]) + raw[3:]
    with pytest.raises(ProtocolError, match="wire version"):
        decode_header(forged, MAX_BYTES)
    assert struct.unpack_from("<H", raw, 4)[0] == 1


# --------------------------------------------------------------------------- rogue host
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rogue_host_without_secret_cannot_join_or_inject(
    make_network: Callable[[int, str], Network], secret_file: Path, job: Path, tmp_path: Path
) -> None:
    """A fourth host, without the secret, attacks the coordinator, party 0 and the dealer
    while a 2-party session runs; the session completes correctly and every CurveZMQ handshake
    of the rogue fails (while its TCP connections do reach the sockets).

    The session multiplies until the test writes ``stop`` (after the rogue is done), so the
    attack always meets a running session however slow either side is."""
    net = make_network(4, "none")
    stop = tmp_path / "stop"
    session = MultiHostSession(
        net,
        2,
        job,
        ["--loop", "1000000", "--sleep", "0.05", "--until", str(stop)],
        secret_file=secret_file,
        timeout_s=30.0,
        rendezvous_timeout_s=60.0,
    )
    session.start()
    session.procs[0].wait_for_line(r"\[party 0\] LOOP", 90.0)
    peers = json.loads(session.procs[1].wait_for_line(r"\[party 1\] PEERS (.*)", 5.0)[1])
    secret = secret_file.read_bytes().strip()
    keys = Security(secret, 2)
    targets = [
        {
            "name": "coordinator",
            "endpoint": f"tcp://{session.coordinator}",
            "server_key": keys.public_key("coordinator").decode(),
        },
        {
            "name": "party 0",
            "endpoint": peers["0"],
            "server_key": keys.public_key(rank_name(0)).decode(),
        },
        {
            "name": "dealer",
            "endpoint": peers["2"],
            "server_key": keys.public_key(rank_name(2)).decode(),
        },
    ]
    rogue = net.hosts[3].spawn(
        [sys.executable, str(ROGUE), json.dumps(targets)],
        env=clean_env(session.tag),
        name="rogue",
    )
    assert rogue.wait(150.0) == 0, rogue.describe()
    report = json.loads(rogue.wait_for_line(r"^REPORT (.*)", 1.0)[1])
    still_running = all(p.popen.poll() is None for p in session.procs.values())
    stop.write_text("rogue done")  # the event that ends the parties' loop

    codes = session.wait(90.0)
    assert codes == {0: 0, 1: 0, 2: 0}, session.describe()
    result = session.result(0)
    assert result == session.result(1), session.describe()
    assert "desynchronised" not in session.describe() and "malformed" not in session.describe()

    assert still_running, "the session ended before the rogue was done"
    for target in targets:
        name = target["name"]
        attempts = report[name]
        assert attempts["tcp_connected"], f"the rogue could not even reach {name}: {report}"
        for attack in ("null", "curve_random_key", "curve_wrong_secret"):
            events = attempts[attack]
            assert "HANDSHAKE_SUCCEEDED" not in events, f"{attack} on {name}: {events}"
        for attack in ("curve_random_key", "curve_wrong_secret"):
            assert any(e.startswith("HANDSHAKE_FAILED") for e in attempts[attack]), (
                f"{attack} on {name} never reached the handshake: {attempts[attack]}"
            )
    assert net.leftover_pids() == {}
    assert pids_with_env(TAG_ENV, session.tag) == []
