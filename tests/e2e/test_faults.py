"""Faults across hosts: crashes, a partition, and mismatched configuration.

Two parties and the dealer, each on its own host, started with the multi-host CLI and a short
message timeout (``CRYPTEN_LITE_TIMEOUT=5``). For every fault, every launcher must exit
non-zero within ``TIMEOUT_S + SLACK_S`` of the fault, its output must name the cause and the
party, and no process may remain on any host. That includes the dealer's launcher when
party 0 vanishes: the session failed, so the dealer host must not report success.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.netns import TAG_ENV, MultiHostSession, Network, RankOptions, pids_with_env, write_secret

TIMEOUT_S = 5.0  # CRYPTEN_LITE_TIMEOUT of every scenario
# From the moment a fault is detectable until every launcher has exited: the launcher's stop
# grace (2 s), interpreter teardown, and a machine loaded several times over (make
# test-loaded). The bound separates "stopped because of the fault" from "hung"; it is not a
# speed requirement.
SLACK_S = 30.0
RENDEZVOUS_S = 60.0
LOOP = ["--loop", "100000", "--sleep", "0.02"]  # runs until a fault stops it
DEALER = 2


def _session(
    net: Network,
    secret_file: Path,
    job: Path,
    args: list[str],
    *,
    rendezvous_timeout_s: float = RENDEZVOUS_S,
    options: dict[int, RankOptions] | None = None,
) -> MultiHostSession:
    """Two parties and the dealer on ``net``'s hosts 0, 1, 2, with the short timeout."""
    return MultiHostSession(
        net,
        2,
        job,
        args,
        secret_file=secret_file,
        timeout_s=TIMEOUT_S,
        rendezvous_timeout_s=rendezvous_timeout_s,
        options=options,
    )


def _wait_looping(session: MultiHostSession) -> dict[int, int]:
    """Wait until both parties are inside the multiplication loop; their pids."""
    return {
        rank: int(session.procs[rank].wait_for_line(rf"\[party {rank}\] LOOP pid=(\d+)", 120)[1])
        for rank in (0, 1)
    }


def _child_pid(session: MultiHostSession, rank: int) -> int:
    """The pid of ``rank``'s crypten-lite process on its host (not its launcher, nor the run
    directory's janitor): the one running ``crypten_lite.launcher.child``."""
    children = [
        pid for pid in session.host(rank).pids() if b"crypten_lite.launcher.child" in _cmdline(pid)
    ]
    assert len(children) == 1, (children, session.describe())
    return children[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # exited meanwhile
        return b""


def _ended_in_time(session: MultiHostSession, since: float, bound_s: float) -> None:
    for rank, proc in session.procs.items():
        assert proc.ended is not None
        took = proc.ended - since
        assert took <= bound_s, f"{session.name(rank)} took {took:.1f} s\n{session.describe()}"


def _says(session: MultiHostSession, rank: int, *patterns: str) -> None:
    """Launcher ``rank``'s output matches every regular expression in ``patterns``."""
    out = session.procs[rank].stdout + "\n" + session.procs[rank].stderr
    for pattern in patterns:
        assert re.search(pattern, out), f"{pattern!r} not in {session.name(rank)}:\n{out}"


def _nothing_left(net: Network, session: MultiHostSession) -> None:
    assert net.leftover_pids() == {}, session.describe()
    assert pids_with_env(TAG_ENV, session.tag) == []


def _dealer_failed(session: MultiHostSession, codes: dict[int, int]) -> None:
    """Party 0 vanished without ``shutdown``: the dealer's launcher fails, naming party 0."""
    assert codes[DEALER] == 1, session.describe()
    _says(session, DEALER, r"dealer failed", r"party 0")


# --------------------------------------------------------------------------- crashes
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_party_mid_protocol(
    make_network: Callable[[int, str], Network], secret_file: Path, job: Path
) -> None:
    net = make_network(3, "lan")
    session = _session(net, secret_file, job, LOOP).start()
    pids = _wait_looping(session)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    codes = session.wait(TIMEOUT_S + SLACK_S + 10)
    _ended_in_time(session, killed, TIMEOUT_S + SLACK_S)
    assert codes[0] == 1 and codes[1] == 1, session.describe()
    _says(session, 1, r"party 1 failed \(killed by SIGKILL\)")
    _says(session, 0, r"party 0 failed", r"party 1 (closed its connection|.*within 5 s)")
    _nothing_left(net, session)
    _dealer_failed(session, codes)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_dealer_mid_protocol(
    make_network: Callable[[int, str], Network], secret_file: Path, job: Path
) -> None:
    net = make_network(3, "lan")
    session = _session(net, secret_file, job, LOOP).start()
    _wait_looping(session)
    killed = time.monotonic()
    os.kill(_child_pid(session, DEALER), signal.SIGKILL)
    codes = session.wait(TIMEOUT_S + SLACK_S + 10)
    _ended_in_time(session, killed, TIMEOUT_S + SLACK_S)
    assert codes == {0: 1, 1: 1, DEALER: 1}, session.describe()
    _says(session, DEALER, r"dealer failed \(killed by SIGKILL\)")
    # Party 0 talks to the dealer; party 1 learns of it through party 0.
    _says(session, 0, r"party 0: the dealer (closed its connection|.*within 5 s)")
    _says(session, 1, r"party 1: party 0 (closed its connection|.*within 5 s)")
    _nothing_left(net, session)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_network_partition_longer_than_timeout(
    make_network: Callable[[int, str], Network], secret_file: Path, job: Path
) -> None:
    """Party 1's host drops off the network (packets vanish, nothing is refused): both
    parties time out naming the op and each other; nothing waits forever."""
    net = make_network(3, "lan")
    session = _session(net, secret_file, job, LOOP).start()
    _wait_looping(session)
    cut = time.monotonic()
    net.partition(net.hosts[1])
    try:
        codes = session.wait(TIMEOUT_S + SLACK_S + 10)
    finally:
        net.heal(net.hosts[1])
    _ended_in_time(session, cut, TIMEOUT_S + SLACK_S)
    assert codes[0] == 1 and codes[1] == 1, session.describe()
    _says(session, 0, r"PartyTimeoutError: party 0: no '[\w.]+' #\d+ from party 1 within 5 s")
    _says(session, 1, r"PartyTimeoutError: party 1: no '[\w.]+' #\d+ from party 0 within 5 s")
    _nothing_left(net, session)
    _dealer_failed(session, codes)


# --------------------------------------------------------------------------- mismatches
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_wrong_world_size(
    make_network: Callable[[int, str], Network], secret_file: Path, job: Path
) -> None:
    net = make_network(3, "none")
    session = _session(net, secret_file, job, [], options={1: RankOptions(world_size=3)})
    # Party 0 and the dealer say hello first, so the coordinator can answer everyone at once.
    session.start([0, DEALER])
    session.wait_connected(0, 90)
    session.wait_connected(DEALER, 90)
    started = time.monotonic()
    session.start_rank(1)
    codes = session.wait(60)
    _ended_in_time(session, started, TIMEOUT_S + SLACK_S + 10)  # + party 1's start-up
    assert all(code != 0 for code in codes.values()), session.describe()
    cause = r"party 1 \(host .*, pid \d+\) was started with world_size 3, the coordinator with 2"
    for rank in session.ranks:
        _says(session, rank, r"rendezvous failed", cause)
    _nothing_left(net, session)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("env", "cause"),
    [
        ({"CRYPTEN_LITE_FRAC_BITS": "12"}, r"frac_bits (16|12), this party with (12|16)"),
        ({"E2E_PROTOCOL_VERSION": "2"}, r"protocol version (1|2), this party with (2|1)"),
    ],
    ids=["frac-bits", "protocol-version"],
)
def test_mismatched_session_parameter(
    make_network: Callable[[int, str], Network],
    secret_file: Path,
    job: Path,
    env: dict[str, str],
    cause: str,
) -> None:
    """Party 1 runs with another fixed-point precision, or speaks another protocol version.

    The launcher has no switch for the protocol version, so the party script simulates a
    different build (``E2E_PROTOCOL_VERSION`` patches ``crypten_lite.runtime.party.PROTOCOL_VERSION``).
    The set-up fingerprint exchange catches either before any secret is shared.
    """
    net = make_network(3, "none")
    session = _session(net, secret_file, job, [], options={1: RankOptions(env=env)})
    started = time.monotonic()
    session.start()
    codes = session.wait(90)
    assert codes[0] == 1 and codes[1] == 1, session.describe()
    # Whoever received the other's fingerprint names the field; the other may instead see its
    # peer leave during 'setup.config' (it exits before flushing its own fingerprint).
    out = {r: session.procs[r].stdout + session.procs[r].stderr for r in (0, 1)}
    assert any(re.search(rf"party {r}: party {1 - r} runs with {cause}", out[r]) for r in (0, 1)), (
        session.describe()
    )
    for rank in (0, 1):
        other = 1 - rank
        _says(
            session,
            rank,
            rf"party {rank}: party {other} (runs with|closed its connection .*'setup\.config')",
        )
    _ended_in_time(session, started, RENDEZVOUS_S + SLACK_S)  # start-up included
    _nothing_left(net, session)
    _dealer_failed(session, codes)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_different_session_secret(
    make_network: Callable[[int, str], Network], secret_file: Path, job: Path, tmp_path: Path
) -> None:
    """Party 1 holds another secret: it fails the CURVE handshake at once; the others wait
    for it until the rendezvous timeout, then report it missing and the failed handshake."""
    net = make_network(3, "none")
    other = write_secret(tmp_path / "other.key")
    rendezvous_s = 10.0
    session = _session(
        net,
        secret_file,
        job,
        [],
        rendezvous_timeout_s=rendezvous_s,
        options={1: RankOptions(secret_file=other)},
    )
    started = time.monotonic()
    session.start()
    codes = session.wait(rendezvous_s + SLACK_S + 30)
    _ended_in_time(session, started, rendezvous_s + SLACK_S + 10)
    assert all(code != 0 for code in codes.values()), session.describe()
    _says(
        session,
        1,
        r"AuthenticationError: party 1: the coordinator at tcp://[\d.]+:\d+ refused the CURVE "
        r"handshake: this process's session secret differs",
    )
    for rank in (0, DEALER):
        _says(
            session,
            rank,
            r"rendezvous failed: .*party 1.* did not arrive within 10 s",
            r"failed the CURVE handshake \(a process with a different session secret\?\)",
        )
    _nothing_left(net, session)
