#!/usr/bin/env python3
"""Run crypten_lite parties on simulated hosts joined by LAN- or WAN-shaped links.

:func:`launch_shaped` is :func:`crypten_lite.launch` with a ``link``: ``loopback`` runs the
parties on this host over TCP (``launch(transport="tcp")``); ``lan`` and ``wan`` put every party
and the dealer into its own network namespace behind a router whose links are shaped
(``tests/netns``: LAN = 0.2 ms one way, 1 Gbit/s, MTU 9000; WAN = 20 ms one way, 100 Mbit/s,
MTU 1500 — bandwidth by ``tc tbf``, delay by a user-space TUN delay line since the kernel has no
``netem``). Each rank is started with the multi-host CLI (``crypten-lite launch --rank R
--coordinator ... --secret-file ...``), exactly as on separate machines.

Needs root and iproute2 for ``lan``/``wan`` (:func:`link_unavailable` says why not).

Use from a benchmark (``benchmarks/bench.py --link``)::

    from netlink import LINKS, launch_shaped
    per_rank = launch_shaped(party_main, 2, args=(names, reps, warmup), link="wan")

Like ``launch``, the function must be defined at module level and its arguments and results
must be plain values and tensors (``crypten_lite.launcher.codec``): nothing is pickled.
Run as a script, this file is the party side of :func:`launch_shaped` (``--party-call DIR``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests.netns lives in the repository, not in the package
    sys.path.insert(0, str(ROOT))

import crypten_lite  # noqa: E402
from crypten_lite.launcher.api import function_reference  # noqa: E402
from crypten_lite.launcher.child import resolve_function  # noqa: E402
from crypten_lite.launcher.codec import read_value, write_value  # noqa: E402
from tests.netns import MultiHostSession, Network, shaping_unavailable, write_secret  # noqa: E402

__all__ = ["LINKS", "launch_shaped", "link_unavailable"]

T = TypeVar("T")
LINKS = ("loopback", "lan", "wan")


def link_unavailable(link: str) -> str | None:
    """Why ``link`` cannot be simulated on this machine, or ``None`` when it can."""
    if link not in LINKS:
        return f"unknown link {link!r}; choose one of {', '.join(LINKS)}"
    return None if link == "loopback" else shaping_unavailable()


def launch_shaped(
    fn: Callable[..., T],
    world_size: int = 2,
    *,
    args: tuple[Any, ...] = (),
    link: str = "lan",
    dealer: bool = True,
    threads: int = 1,
    timeout_s: float = 900.0,
    message_timeout_s: float = 120.0,
    quiet: bool = True,
    config: crypten_lite.Config | None = None,
) -> list[T]:
    """Run ``fn(*args)`` on ``world_size`` parties over ``link``; each party's result, by rank.

    Args:
        fn: a module-level function, as for :func:`crypten_lite.launch`.
        link: ``loopback``, ``lan`` or ``wan`` (module docstring).
        dealer: a dealer process (on a host of its own for ``lan``/``wan``).
        threads: torch threads per party process.
        timeout_s: wall-clock limit of the whole run.
        message_timeout_s: ``CRYPTEN_LITE_TIMEOUT`` of the parties.
        quiet: do not print the parties' output (it is in the error on failure).
        config: the parties' settings (default: this environment's ``CRYPTEN_LITE_*``); its
            precision, truncation and protocol family reach every party over every link.

    Raises:
        RuntimeError: the link cannot be simulated here, or a party failed (the message has
            every launcher's output).
    """
    reason = link_unavailable(link)
    if reason is not None:
        raise RuntimeError(f"cannot simulate the {link} link: {reason}")
    config = (config or crypten_lite.config_from_env()).replace(timeout_s=message_timeout_s)
    if link == "loopback":
        return crypten_lite.launch(
            fn,
            world_size,
            args=args,
            dealer=dealer,
            transport="tcp",
            config=config,
            threads=threads,
            timeout_s=timeout_s,
            quiet=quiet,
        )
    with tempfile.TemporaryDirectory(prefix="crypten-netlink-") as tmp:
        work = Path(tmp)
        (work / "call.json").write_text(json.dumps(function_reference(fn)))
        write_value(work / "args.clv", tuple(args), where="args")
        secret = write_secret(work / "session.key")
        with Network(world_size + (1 if dealer else 0), link) as net:
            session = MultiHostSession(
                net,
                world_size,
                Path(__file__),
                ["--party-call", str(work)],
                secret_file=secret,
                dealer=dealer,
                timeout_s=message_timeout_s,
                rendezvous_timeout_s=120.0,
                # the namespaced ranks start from a clean CRYPTEN_LITE_* environment
                extra_env={
                    "CRYPTEN_LITE_NUM_THREADS": str(threads),
                    **{
                        k: v
                        for k, v in config.to_env().items()
                        if k.endswith(("FRAC_BITS", "TRUNCATION", "PROTOCOL", "MAX_MESSAGE_BYTES"))
                    },
                },
            )
            session.start()
            try:
                codes = session.wait(timeout_s)
            finally:
                session.kill()
            if not quiet:
                print(session.describe())
            if any(codes.values()):
                raise RuntimeError(f"a party failed over the {link} link:\n{session.describe()}")
        return [read_value(work / f"result-{rank}.clv") for rank in range(world_size)]


def _party_call(work: Path) -> None:
    """The party side of :func:`launch_shaped`: init, call, uninit, write the result."""
    fn = resolve_function(json.loads((work / "call.json").read_text()))
    args = read_value(work / "args.clv")
    party = crypten_lite.init()
    result = fn(*args)
    crypten_lite.uninit()
    write_value(work / f"result-{party.rank}.clv", result, where=f"party {party.rank}'s result")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--party-call"] and len(sys.argv) == 3:
        _party_call(Path(sys.argv[2]))
    else:
        sys.exit(f"usage: {os.path.basename(__file__)} --party-call DIR (used by launch_shaped)")
