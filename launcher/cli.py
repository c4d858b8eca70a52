"""Layer L6: the ``crypten-lite`` command line (also ``python -m crypten_lite.launcher``).

Usage (``crypten-lite launch --help`` prints the details)::

    # one host: N parties (+ the dealer), rendezvous and supervision by this process
    crypten-lite launch -n 2 --dealer [--transport ipc|tcp] [--timeout S] script.py [args...]

    # three parties, no dealer: the replicated family (honest majority)
    crypten-lite launch -n 3 --protocol replicated script.py [args...]

    # several hosts: one launcher per rank; rank 0's launcher hosts the coordinator
    crypten-lite secret session.key            # once; copy the file to every host
    crypten-lite launch --rank 0 --world-size 2 --coordinator 10.0.0.1:29500 \\
        --secret-file session.key --dealer script.py
    crypten-lite launch --rank 1 ... script.py      # on the second host
    crypten-lite launch --rank dealer --world-size 2 --coordinator 10.0.0.1:29500 \\
        --secret-file session.key                   # the dealer, on a host of its own

Without ``--rank`` and ``-n``, the torchrun / SLURM variables ``RANK`` (``SLURM_PROCID``),
``WORLD_SIZE`` (``SLURM_NTASKS``), ``MASTER_ADDR`` and ``MASTER_PORT`` select the multi-host
mode. Exit codes: 0 success, 1 a party failed, 2 bad command line or set-up, 124 ``--max-time``
ran out, 130 interrupted. Bad input prints exactly one ``crypten-lite: error: ...`` line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from crypten_lite.config import Config, config_from_env
from crypten_lite.errors import ConfigurationError
from crypten_lite.launcher.local import TFP_WARNING, run_local, run_rank
from crypten_lite.launcher.security import generate_secret
from crypten_lite.launcher.supervisor import Interrupted, Outcome

__all__ = ["main"]

_TFP_LINE = f"crypten-lite: warning: no --dealer, so {TFP_WARNING}"


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive(kind: type[float] | type[int]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _parser() -> _Parser:
    parser = _Parser(
        prog="crypten-lite",
        description="Launch crypten_lite secure multi-party computations.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{launch,secret}", parser_class=_Parser)
    launch = sub.add_parser(
        "launch",
        help="run a script as N parties",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run SCRIPT as N party processes (plus a dealer process with --dealer).\n\n"
            "One host:   crypten-lite launch -n 2 --dealer script.py [args...]\n"
            "Many hosts: crypten-lite launch --rank R --world-size N --coordinator HOST:PORT\n"
            "                --secret-file KEY [--dealer] script.py [args...]\n"
            "            on every host (rank 0 hosts the coordinator on PORT), and\n"
            "            crypten-lite launch --rank dealer --world-size N --coordinator\n"
            "                HOST:PORT --secret-file KEY\n"
            "            for the dealer. RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun)\n"
            "            or SLURM_PROCID/SLURM_NTASKS stand in for the flags.\n\n"
            "Each party sees RANK and WORLD_SIZE and calls crypten_lite.init(). Output lines\n"
            "are prefixed [party i] / [dealer]. If any process fails, all are stopped and the\n"
            "launcher exits 1 showing the failing party's traceback."
        ),
    )
    launch.add_argument("-n", "--nprocs", type=int, help="number of parties on this host (>= 2)")
    launch.add_argument(
        "--dealer",
        action="store_true",
        help="start a dealer process (without it party 0 deals: insecure, tests only); "
        "across hosts: the session has a dealer started with --rank dealer",
    )
    launch.add_argument(
        "--protocol",
        choices=("beaver", "replicated"),
        help="protocol family: beaver (default: additive shares, dealer triples; any N) or "
        "replicated (exactly 3 parties, honest majority, no dealer: refuses --dealer); "
        "default from CRYPTEN_LITE_PROTOCOL",
    )
    launch.add_argument(
        "--transport",
        choices=("ipc", "tcp"),
        help="ipc (one host, default) or tcp (CurveZMQ; required across hosts)",
    )
    launch.add_argument(
        "--timeout",
        type=_positive(float),
        metavar="S",
        help="seconds a party waits for one message, and for the rendezvous (default 60)",
    )
    launch.add_argument(
        "--rendezvous-timeout",
        type=_positive(float),
        metavar="S",
        help="seconds every party has to arrive (default: --timeout)",
    )
    launch.add_argument(
        "--max-time", type=_positive(float), metavar="S", help="stop everything after S seconds"
    )
    launch.add_argument(
        "--threads", type=_positive(int), metavar="T", help="torch threads per party process"
    )
    launch.add_argument("--rank", help="multi-host: this host's rank, or 'dealer'")
    launch.add_argument("--world-size", type=int, help="multi-host: number of parties")
    launch.add_argument(
        "--coordinator", metavar="HOST:PORT", help="multi-host: rank 0's host and port"
    )
    launch.add_argument(
        "--secret-file", metavar="PATH", help="multi-host: file with the shared session secret"
    )
    launch.add_argument(
        "--allow-shared-secret-file",
        action="store_true",
        help="accept a --secret-file that group or others can read (refused by default, as ssh "
        "refuses such a private key)",
    )
    launch.add_argument(
        "--host", metavar="ADDR", help="multi-host: address this rank binds and advertises"
    )
    launch.add_argument("script", nargs="?", help="the Python script every party runs")
    launch.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments of the script")
    secret = sub.add_parser("secret", help="write a new random session secret to a file")
    secret.add_argument("path", help="file to create (mode 0600; must not exist)")
    return parser


def _config(ns: argparse.Namespace, transport: str | None) -> Config:
    """The session settings: ``CRYPTEN_LITE_*`` variables, then the flags (``transport``
    ``None`` keeps the variable's or the default)."""
    overrides: dict[str, object] = {"dealer": "ttp" if ns.dealer else "tfp"}
    if transport is not None:
        overrides["transport"] = transport
    if ns.timeout is not None:
        overrides["timeout_s"] = ns.timeout
        overrides["rendezvous_timeout_s"] = ns.timeout
    if ns.rendezvous_timeout is not None:
        overrides["rendezvous_timeout_s"] = ns.rendezvous_timeout
    if ns.protocol is not None:
        overrides["protocol"] = ns.protocol
    return config_from_env(None, **overrides)


def _warning(config: Config, dealer: bool) -> str | None:
    """The insecure-dealer line, for the Beaver family without a dealer process only."""
    return None if dealer or config.protocol == "replicated" else _TFP_LINE


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                raise UsageError(f"{name}={value!r} is not an integer") from None
    return None


def _script_mode(ns: argparse.Namespace, needed: bool) -> list[str]:
    if not needed:
        if ns.script is not None:
            raise UsageError("the dealer runs no script; drop the script argument")
        return []
    if ns.script is None:
        raise UsageError("no script given: crypten-lite launch -n N [options] script.py [args]")
    if not os.path.isfile(ns.script):
        raise UsageError(f"script not found: {ns.script}")
    return ["script", os.path.abspath(ns.script), *ns.script_args]


def _launch(ns: argparse.Namespace) -> Outcome:
    multi_host = ns.rank is not None or ns.coordinator is not None
    if ns.nprocs is None and not multi_host:
        multi_host = _env_int("RANK", "SLURM_PROCID") is not None
        if not multi_host:
            raise UsageError("give -n N (parties on this host) or --rank/--coordinator")
    if ns.nprocs is not None and multi_host:
        raise UsageError("-n (one host) and --rank/--coordinator (many hosts) exclude each other")
    if not multi_host:
        if ns.nprocs < 2:
            raise UsageError(f"-n must be at least 2 (MPC needs two parties), got {ns.nprocs}")
        mode = _script_mode(ns, needed=True)
        config = _config(ns, ns.transport)
        return run_local(
            mode,
            ns.nprocs,
            dealer=ns.dealer,
            config=config,
            threads=ns.threads,
            max_time_s=ns.max_time,
            warning=_warning(config, ns.dealer),
        )
    # ---- one rank of a multi-host session
    world_size = (
        ns.world_size if ns.world_size is not None else _env_int("WORLD_SIZE", "SLURM_NTASKS")
    )
    if world_size is None or world_size < 2:
        raise UsageError("--world-size N (>= 2) is required with --rank")
    if ns.rank == "dealer":
        rank = world_size
    elif ns.rank is not None:
        try:
            rank = int(ns.rank)
        except ValueError:
            raise UsageError(f"--rank must be an integer or 'dealer', got {ns.rank!r}") from None
    else:
        env_rank = _env_int("RANK", "SLURM_PROCID")
        if env_rank is None:
            raise UsageError("--rank R is required with --coordinator")
        rank = env_rank
    if not 0 <= rank <= world_size:
        raise UsageError(f"--rank {rank} is out of range for --world-size {world_size}")
    coordinator = ns.coordinator
    if coordinator is None:
        addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not addr or not port:
            raise UsageError("--coordinator HOST:PORT (or MASTER_ADDR and MASTER_PORT) is required")
        coordinator = f"{addr}:{port}"
    host, _, port_text = coordinator.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    mode = _script_mode(ns, needed=rank != world_size)
    config = _config(ns, ns.transport or "tcp")  # run_rank refuses anything but tcp
    local = _env_int("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE") or 1
    return run_rank(
        mode,
        rank=rank,
        world_size=world_size,
        dealer=ns.dealer,
        coordinator_host=host,
        coordinator_port=int(port_text),
        config=config,
        secret_file=ns.secret_file,
        allow_shared_secret_file=ns.allow_shared_secret_file,
        host=ns.host,
        local_processes=local,
        threads=ns.threads,
        max_time_s=ns.max_time,
        warning=None if rank == world_size else _warning(config, ns.dealer),
    )


def _write_secret(path: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; refusing to overwrite a session secret") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(generate_secret() + b"\n")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (module docstring)."""
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
        if ns.command is None:
            raise UsageError("choose a command: crypten-lite launch ... | crypten-lite secret PATH")
        if ns.command == "secret":
            _write_secret(ns.path)
            return 0
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                previous[sig] = signal.signal(sig, _on_sigterm)
        try:
            outcome = _launch(ns)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    except UsageError as exc:
        print(f"crypten-lite: error: {exc}", file=sys.stderr)
        return 2
    except (ConfigurationError, OSError) as exc:
        print(f"crypten-lite: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted):
        print("crypten-lite: interrupted", file=sys.stderr)
        return 130
    if not outcome.ok:
        print(outcome.report(), file=sys.stderr, flush=True)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
