"""Hosts as Linux network namespaces, joined through a router namespace with shaped links.

Topology (one :class:`Network`)::

        host 0 (netns)            router (netns)                 host 1 (netns)
     eth0 10.231.1.2/24 --veth-- h0 10.231.1.1   h1 10.231.2.1 --veth-- eth0 10.231.2.2/24
       tbf (upload)              tbf (download)  tbf (download)           tbf (upload)
                                      |
                                 dl0 (TUN) <-> delayline.py  (one-way delay, user space)

* Each host is its own namespace with one interface, its own address ``10.231.<i+1>.2`` and a
  default route through the router. Nothing is connected to the machine's own network: the
  namespaces reach only each other.
* Bandwidth: a ``tc tbf`` qdisc on both ends of every veth, so each host has an access link of
  the profile's rate in each direction (upload on the host's end, download on the router's).
* Delay: the kernel here has no ``netem``. When the profile has a delay, policy routing in the
  router sends every forwarded packet into the TUN device ``dl0``; :mod:`tests.netns.delayline`
  (a user-space process in the router namespace) holds each packet for the one-way delay and
  writes it back; packets that come back out of ``dl0`` are routed normally (rule ``iif dl0 ->
  main``, then a blackhole rule so that an unroutable packet cannot loop). Every packet of every
  direction therefore takes exactly one pass through the delay line: RTT = 2 x delay.
* Partition: :meth:`Network.partition` sets the router's end of a host's veth down. Its
  connected route disappears and a standing blackhole route for the host's subnet (metric
  1000, shadowed while the link is up) drops packets towards it without any ICMP error;
  packets from it are lost on the dead link. TCP sees silence, as on a real partition.
  :meth:`Network.heal` sets the link up again.

Names: namespaces are called ``cle2e-<pid>-<n>-r`` / ``-h<i>`` (pid of the test process), so
concurrent test runs never collide; namespaces left by a test process that no longer exists are
removed when the next :class:`Network` starts. :meth:`Network.close` kills every process in the
namespaces and deletes them; it runs even when set-up fails half-way, and at interpreter exit
for anything still open.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import shutil
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.netns.procs import Proc, kill_pids, pids_in_netns, wait_gone

__all__ = [
    "PROFILES",
    "Host",
    "LinkProfile",
    "Network",
    "NetnsError",
    "netns_unavailable",
    "shaping_unavailable",
]

NETNS_DIR = Path("/run/netns")
PREFIX = "cle2e-"
SUBNET = "10.231"
DELAYLINE = Path(__file__).with_name("delayline.py")
_CMD_TIMEOUT_S = 20.0
_PARTITION_METRIC = 1000  # worse than the connected route (metric 0) of an up link
_counter = itertools.count()
_open_networks: weakref.WeakSet[Network] = weakref.WeakSet()


class NetnsError(RuntimeError):
    """Creating or changing the namespaces failed (the message has the command's stderr)."""


@dataclass(frozen=True)
class LinkProfile:
    """How every host's access link behaves.

    Attributes:
        name: ``none``, ``lan`` or ``wan``.
        delay_ms: one-way delay added by the delay line (0: no delay line).
        rate_mbit: rate of each direction of each access link (``None``: unshaped).
        mtu: MTU of every link. LAN uses jumbo frames (9000, common in data centres), which
            also keeps the user-space delay line's packet rate at 1 Gbit/s manageable.
    """

    name: str
    delay_ms: float
    rate_mbit: float | None
    mtu: int = 1500

    @property
    def shaped(self) -> bool:
        """Whether this profile needs tbf and the delay line."""
        return self.delay_ms > 0 or self.rate_mbit is not None

    def tbf_args(self) -> list[str]:
        """``tc qdisc ... tbf`` arguments: the rate, a burst of >= 1 ms or 2 MTUs, a queue
        of >= 2 bandwidth-delay products (so TCP is limited by the rate, not by drops)."""
        assert self.rate_mbit is not None
        bytes_per_s = self.rate_mbit * 1e6 / 8
        burst = max(2 * self.mtu, int(bytes_per_s / 1000))
        limit = max(1 << 20, int(4 * bytes_per_s * self.delay_ms / 1000))
        return ["rate", f"{self.rate_mbit:g}mbit", "burst", str(burst), "limit", str(limit)]


PROFILES: dict[str, LinkProfile] = {
    "none": LinkProfile("none", 0.0, None),
    "lan": LinkProfile("lan", 0.2, 1000.0, mtu=9000),
    "wan": LinkProfile("wan", 20.0, 100.0, mtu=1500),
}


# --------------------------------------------------------------------------- commands
def _run(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    """Run a short system command; raise :class:`NetnsError` with its stderr on failure."""
    try:
        done = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"`{' '.join(argv)}` failed: {exc}") from None
    if check and done.returncode != 0:
        shown = " ".join(argv) if input_text is None else f"{' '.join(argv)} <<< {input_text!r}"
        raise NetnsError(f"`{shown}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Run ``ip`` commands inside ``netns`` in one process (``ip -n NETNS -batch -``)."""
    _run(["ip", "-n", netns, "-batch", "-"], input_text="\n".join(commands) + "\n")


def _sysctl(netns: str, settings: Mapping[str, str]) -> None:
    # /proc/sys/net shows the namespace of the process that reads it, hence `ip netns exec`.
    script = "; ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in settings.items())
    _run(["ip", "netns", "exec", netns, "sh", "-ec", script])


def _delete_netns(name: str) -> None:
    kill_pids(pids_in_netns(NETNS_DIR / name))
    wait_gone(lambda: pids_in_netns(NETNS_DIR / name), 5.0)
    _run(["ip", "netns", "delete", name], check=False)


def _remove_stale() -> None:
    """Delete namespaces left behind by test processes that no longer exist."""
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            _delete_netns(name)
        except PermissionError:
            pass


# --------------------------------------------------------------------------- availability
@functools.cache
def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "not root: creating network namespaces needs CAP_NET_ADMIN (make test as root)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed (`apt-get install -y iproute2`)"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", name])
        _ip_batch(name, ["link set lo up", "link add vprobe0 type veth peer name vprobe1"])
    except NetnsError as exc:
        return f"network namespaces unusable: {exc}"
    finally:
        _run(["ip", "netns", "delete", name], check=False)
    return None


@functools.cache
def shaping_unavailable() -> str | None:
    """Why LAN/WAN shaping (tc tbf + TUN delay line) cannot be used here, or ``None``."""
    basic = netns_unavailable()
    if basic is not None:
        return basic
    if shutil.which("tc") is None:
        return "tc is not installed (`apt-get install -y iproute2`)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: the delay line needs the TUN driver"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", name])
        _ip_batch(
            name,
            ["link add vprobe0 type veth peer name vprobe1", "tuntap add dev tprobe0 mode tun"],
        )
        _run(
            [
                "tc",
                "-n",
                name,
                "qdisc",
                "add",
                "dev",
                "vprobe0",
                "root",
                "tbf",
                "rate",
                "100mbit",
                "burst",
                "32kb",
                "limit",
                "1mb",
            ]
        )
    except NetnsError as exc:
        return f"link shaping unavailable: {exc}"
    finally:
        _run(["ip", "netns", "delete", name], check=False)
    return None


# --------------------------------------------------------------------------- hosts
@dataclass(eq=False)
class Host:
    """One simulated host: a network namespace with one address.

    Attributes:
        index: position in :attr:`Network.hosts`.
        netns: the namespace's name (``ip netns exec NETNS ...``).
        address: its IPv4 address.
        router_dev: the router's end of its link (what :meth:`Network.partition` sets down).
    """

    index: int
    netns: str
    address: str
    router_dev: str

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        name: str | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> Proc:
        """Start ``argv`` inside this host's namespace (``ip netns exec`` execs in place, so the
        returned pid is the command's own)."""
        return Proc(
            ["ip", "netns", "exec", self.netns, *argv],
            env=env,
            name=name or f"host {self.index} ({self.address})",
            cwd=cwd,
        )

    def pids(self) -> list[int]:
        """Live processes in this host's namespace."""
        return pids_in_netns(self.netns_path)


class Network:
    """``n_hosts`` hosts behind one router, links shaped by ``profile`` (module docstring).

    Use as a context manager, or call :meth:`start` and (always) :meth:`close`::

        with Network(3, "wan") as net:
            proc = net.hosts[0].spawn([...], env=env)

    Raises:
        NetnsError: set-up failed (everything created so far is removed first).
    """

    def __init__(self, n_hosts: int, profile: str | LinkProfile = "none") -> None:
        if not 1 <= n_hosts <= 200:
            raise ValueError(f"n_hosts must be in [1, 200], got {n_hosts}")
        self.profile = PROFILES[profile] if isinstance(profile, str) else profile
        base = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.router = f"{base}-r"
        self.hosts = [
            Host(i, f"{base}-h{i}", f"{SUBNET}.{i + 1}.2", f"h{i}") for i in range(n_hosts)
        ]
        self._created: list[str] = []
        self._delayline: Proc | None = None
        self._closed = False

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- set-up
    def start(self) -> Network:
        """Create the namespaces, links, shaping and delay line."""
        _remove_stale()
        _open_networks.add(self)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created.append(name)

    def _create(self) -> None:
        p = self.profile
        self._add_netns(self.router)
        _ip_batch(self.router, ["link set lo up"])
        _sysctl(
            self.router,
            {
                "net.ipv4.ip_forward": "1",
                "net.ipv4.conf.all.rp_filter": "0",
                "net.ipv4.conf.default.rp_filter": "0",
                "net.ipv4.conf.all.send_redirects": "0",
            },
        )
        router_cmds = []
        for host in self.hosts:
            self._add_netns(host.netns)
            subnet = f"{SUBNET}.{host.index + 1}"
            _ip_batch(
                self.router,
                [f"link add {host.router_dev} type veth peer name eth0 netns {host.netns}"],
            )
            _ip_batch(
                host.netns,
                [
                    "link set lo up",
                    f"link set eth0 mtu {p.mtu} up",
                    f"addr add {host.address}/24 dev eth0",
                    f"route add default via {subnet}.1",
                ],
            )
            router_cmds += [
                f"link set {host.router_dev} mtu {p.mtu} up",
                f"addr add {subnet}.1/24 dev {host.router_dev}",
                # Takes over only while the link is down (see partition): silent drops.
                f"route add blackhole {subnet}.0/24 metric {_PARTITION_METRIC}",
            ]
        _ip_batch(self.router, router_cmds)
        if p.rate_mbit is not None:
            for host in self.hosts:
                for netns, dev in ((host.netns, "eth0"), (self.router, host.router_dev)):
                    _run(
                        [
                            "tc",
                            "-n",
                            netns,
                            "qdisc",
                            "replace",
                            "dev",
                            dev,
                            "root",
                            "tbf",
                            *p.tbf_args(),
                        ]
                    )
        if p.delay_ms > 0:
            self._start_delayline()

    def _start_delayline(self) -> None:
        p = self.profile
        _ip_batch(
            self.router,
            [
                "tuntap add dev dl0 mode tun",
                f"link set dl0 mtu {p.mtu} txqueuelen 10000 up",
                "route add default dev dl0 table 100",
                "rule add iif dl0 lookup main prio 100",
                "rule add iif dl0 blackhole prio 101",
                "rule add lookup 100 prio 200",
            ],
        )
        _sysctl(self.router, {"net.ipv4.conf.dl0.rp_filter": "0"})
        self._delayline = Proc(
            [
                "ip",
                "netns",
                "exec",
                self.router,
                sys.executable,
                str(DELAYLINE),
                "--dev",
                "dl0",
                "--delay-ms",
                f"{p.delay_ms:g}",
            ],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            name="delay line",
        )
        try:
            self._delayline.wait_for_line("^ready$", 15.0)
        except TimeoutError as exc:
            raise NetnsError(str(exc)) from None

    # ----------------------------------------------------------------- faults
    def partition(self, host: Host) -> None:
        """Cut ``host`` off from every other host (packets are dropped, nothing is refused)."""
        _ip_batch(self.router, [f"link set {host.router_dev} down"])

    def heal(self, host: Host) -> None:
        """Reconnect a partitioned host."""
        _ip_batch(self.router, [f"link set {host.router_dev} up"])

    # ----------------------------------------------------------------- tear-down
    def leftover_pids(self) -> dict[str, list[int]]:
        """Processes still alive in the host namespaces (host name -> pids); ``{}`` if none."""
        left = {h.netns: h.pids() for h in self.hosts}
        return {name: pids for name, pids in left.items() if pids}

    def close(self) -> None:
        """Kill every process in the namespaces and delete them (idempotent, never raises)."""
        if self._closed:
            return
        self._closed = True
        if self._delayline is not None:
            self._delayline.kill()
        for name in reversed(self._created):
            try:
                _delete_netns(name)
            except NetnsError:  # pragma: no cover - best effort
                pass
        _open_networks.discard(self)


@atexit.register
def _close_all() -> None:
    for net in list(_open_networks):
        net.close()
