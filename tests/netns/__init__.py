"""Test helpers (not a layer of the library): simulated hosts for multi-host tests.

* :mod:`tests.netns.network` — hosts as Linux network namespaces behind a router namespace,
  links shaped as LAN or WAN (``tc tbf`` for bandwidth, a user-space TUN delay line for delay,
  since the kernel has no ``netem``), partitions, guaranteed tear-down.
* :mod:`tests.netns.delayline` — the delay line itself (a standalone script).
* :mod:`tests.netns.session` — one ``crypten-lite launch`` per rank, each on its own host.
* :mod:`tests.netns.procs` — child processes with captured output, bounded waits, and
  ``/proc`` scans that prove no process was left behind.

Everything needs root and iproute2; :func:`netns_unavailable` and :func:`shaping_unavailable`
say why not, for a clean ``pytest.skip``. ``benchmarks/netlink.py`` uses the same helpers.
"""

from __future__ import annotations

from tests.netns.network import (
    PROFILES,
    Host,
    LinkProfile,
    NetnsError,
    Network,
    netns_unavailable,
    shaping_unavailable,
)
from tests.netns.procs import Proc, pids_in_netns, pids_with_env
from tests.netns.session import (
    TAG_ENV,
    MultiHostSession,
    RankOptions,
    clean_env,
    launcher_argv,
    parse_result,
    single_host,
    write_secret,
)

__all__ = [
    "PROFILES",
    "TAG_ENV",
    "Host",
    "LinkProfile",
    "MultiHostSession",
    "NetnsError",
    "Network",
    "Proc",
    "RankOptions",
    "clean_env",
    "launcher_argv",
    "netns_unavailable",
    "parse_result",
    "pids_in_netns",
    "pids_with_env",
    "shaping_unavailable",
    "single_host",
    "write_secret",
]
