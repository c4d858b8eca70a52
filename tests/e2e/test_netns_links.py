"""The simulated network itself: shaped links behave as specified, partitions drop, nothing
survives tear-down. If these fail, the multi-host and fault tests prove nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.netns import PROFILES, Network, Proc, clean_env, pids_in_netns

PROBE = Path(__file__).resolve().parent / "scripts" / "tcp_probe.py"
PORT = 5001


def _measure(net: Network, nbytes: int) -> dict[str, float]:
    """RTT and throughput from host 0 to host 1, over the network's links."""
    env = clean_env("netns-links")
    server_host, client_host = net.hosts[1], net.hosts[0]
    server = server_host.spawn(
        [sys.executable, str(PROBE), "serve", server_host.address, str(PORT)], env=env
    )
    server.wait_for_line("listening", 20.0)
    client = client_host.spawn(
        [sys.executable, str(PROBE), "probe", server_host.address, str(PORT), str(nbytes)],
        env=env,
    )
    assert client.wait(60.0) == 0, client.describe() + server.describe()
    assert server.wait(10.0) == 0, server.describe()
    stats = json.loads(client.stdout.splitlines()[-1])
    rtts = sorted(stats["rtt_ms"])
    # The fastest round trip is the link's: a busy machine only adds scheduling delay on top,
    # so the minimum is what the shaping sets, whatever else runs (the median is informative).
    return {"rtt_ms": rtts[0], "rtt_median_ms": rtts[len(rtts) // 2], "mbit_s": stats["mbit_s"]}


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("profile", "nbytes", "rtt_range_ms"),
    [("lan", 20_000_000, (0.4, 5.0)), ("wan", 4_000_000, (40.0, 60.0))],
)
def test_shaped_link_has_profile_delay_and_rate(
    make_network: Callable[[int, str], Network],
    profile: str,
    nbytes: int,
    rtt_range_ms: tuple[float, float],
) -> None:
    """The fastest RTT = 2 x the one-way delay (plus a little user-space overhead); throughput
    at most the tbf rate, and not far below it."""
    net = make_network(2, profile)
    got = _measure(net, nbytes)
    lo, hi = rtt_range_ms
    assert lo <= got["rtt_ms"] <= hi, got
    rate = PROFILES[profile].rate_mbit
    assert rate is not None
    # TCP slow start over the delay costs a few RTTs of the transfer, hence the lower bound.
    assert 0.3 * rate <= got["mbit_s"] <= 1.05 * rate, got


@pytest.mark.timeout(60)
@pytest.mark.parametrize("profile", ["none", "lan"])
def test_partition_drops_and_heal_restores(
    make_network: Callable[[int, str], Network], profile: str
) -> None:
    """A partitioned host is silent (connects time out, nothing is refused); heal restores."""
    net = make_network(2, profile)
    a, b = net.hosts
    # A listener on b, probed from a with a short connect timeout.
    check = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('{b.address}', {PORT}), timeout=1.0).close(); print('up')\n"
        "except OSError as e:\n"
        "    print('down', type(e).__name__)\n"
    )
    env = clean_env("netns-links")
    listener = b.spawn(
        [
            sys.executable,
            "-c",
            f"import socket,time; s=socket.create_server(('{b.address}', {PORT})); "
            "print('listening', flush=True); time.sleep(30)",
        ],
        env=env,
    )
    listener.wait_for_line("listening", 20.0)

    def probe() -> str:
        proc = a.spawn([sys.executable, "-c", check], env=env)
        proc.wait(20.0)
        return proc.stdout.strip()

    assert probe() == "up"
    net.partition(b)
    assert probe() == "down TimeoutError"  # dropped silently, not refused
    net.heal(b)
    assert probe() == "up"
    listener.kill()


@pytest.mark.timeout(60)
def test_close_kills_processes_and_removes_namespaces(need_netns: None) -> None:
    net = Network(2, "none").start()
    names = [net.router, *(h.netns for h in net.hosts)]
    sleeper: Proc = net.hosts[0].spawn(["sleep", "60"], env=clean_env("netns-links"))
    # The child enters the namespace (``ip netns exec`` calls setns, then execs) a moment after
    # it is spawned: poll, bounded, instead of racing it.
    deadline = time.monotonic() + 5.0
    while pids_in_netns(net.hosts[0].netns_path) != [sleeper.pid] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pids_in_netns(net.hosts[0].netns_path) == [sleeper.pid]
    net.close()
    assert sleeper.wait(5.0) == -9
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names), listed
    net.close()  # idempotent


@pytest.mark.timeout(60)
def test_hosts_are_isolated_from_this_machine(make_network: Callable[[int, str], Network]) -> None:
    """Nothing on this machine's own network can reach or be reached from the namespaces."""
    net = make_network(1, "none")
    routes = subprocess.run(
        ["ip", "-n", net.hosts[0].netns, "route", "show"], capture_output=True, text=True
    ).stdout
    assert "10.231.1.0/24" in routes and "default via 10.231.1.1" in routes, routes
    # The router has no interface outside the namespaces, so no route leaves them.
    links = subprocess.run(
        ["ip", "-n", net.router, "-o", "link", "show"], capture_output=True, text=True
    ).stdout
    assert sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()) == [
        "h0",
        "lo",
    ]
    with socket.socket() as s:  # our own addresses do not include the simulated ones
        with pytest.raises(OSError):
            s.bind((net.hosts[0].address, 0))
    assert os.geteuid() == 0
