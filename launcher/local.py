"""Layer L6: a whole session on this host — N parties, optionally the dealer, and the coordinator.

:func:`run_local` is what ``crypten-lite launch -n N`` and :func:`crypten_lite.launch` do;
:func:`run_rank` is the multi-host counterpart (one rank on this host, and the coordinator too
when the rank is 0). Both are the same spine, :func:`_run_session`:

1. a private run directory (mode 0700; :func:`~crypten_lite.launcher.session.private_run_dir`
   removes it however the launcher ends, ``kill -9`` included);
2. over TCP the session secret — generated (one host) or read from ``--secret-file`` (many
   hosts; refused if group or others can read it) — is handed to every child through an
   inherited pipe: it never lies in a file of the run directory, an environment variable or a
   command line;
3. the coordinator in this process when this launcher hosts it (IPC: ``<run dir>/coordinator``;
   TCP: a random port on 127.0.0.1, or the given port on all interfaces for rank 0);
4. the party processes (and the dealer), supervised together
   (:class:`~crypten_lite.launcher.supervisor.Supervisor`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from crypten_lite.config import Config
from crypten_lite.errors import ConfigurationError
from crypten_lite.launcher.rendezvous import Coordinator
from crypten_lite.launcher.security import Security, generate_secret
from crypten_lite.launcher.session import (
    ENV_NUM_THREADS,
    ENV_SECRET,
    ProcessEnv,
    private_run_dir,
)
from crypten_lite.launcher.supervisor import ChildSpec, Outcome, Supervisor

__all__ = [
    "TFP_WARNING",
    "check_family",
    "check_transport",
    "child_argv",
    "run_local",
    "run_rank",
]

# What every front end says when a session runs without a dealer process (the CLI prints it,
# launch() raises it as a RuntimeWarning; each puts its own prefix in front).
TFP_WARNING = (
    "party 0 deals correlated randomness itself (INSECURE TrustedFirstParty: it can see every "
    "secret); for tests only"
)

_CHILD = [sys.executable, "-m", "crypten_lite.launcher.child"]


def child_argv(mode: list[str]) -> list[str]:
    """The command line of a child process running ``mode`` (see :mod:`.child`)."""
    return [*_CHILD, *mode]


def _warn(warning: str | None, err: TextIO | None) -> None:
    if warning:
        stream = err or sys.stderr
        stream.write(warning + "\n")
        stream.flush()


def check_transport(config: Config, *, multi_host: bool) -> None:
    """The one check of what a launcher can connect with (``Config`` knows every transport).

    Raises:
        ConfigurationError: ``inproc`` (threads of one process), or ``ipc`` across hosts.
    """
    allowed = ("tcp",) if multi_host else ("ipc", "tcp")
    if config.transport not in allowed:
        where = (
            "across hosts the transport must be tcp (--transport tcp)"
            if multi_host
            else ("a launcher's processes connect with 'ipc' or 'tcp'")
        )
        raise ConfigurationError(f"{where}; got transport {config.transport!r}")


def check_family(config: Config, world_size: int, *, dealer: bool) -> None:
    """The one launcher check of the protocol family (``Config.protocol``).

    The replicated family runs exactly 3 parties and no dealer process: party 2 deals to
    parties 0 and 1 in-session where needed, and a separate dealer would be a fourth
    party that no protocol of the family talks to.

    Raises:
        ConfigurationError: replicated with another world size, or with a dealer.
    """
    if config.protocol != "replicated":
        return
    if world_size != 3:
        raise ConfigurationError(
            f"the replicated protocol family runs exactly 3 parties, got {world_size}"
        )
    if dealer:
        raise ConfigurationError(
            "the replicated protocol family has no dealer process: drop --dealer (or pass "
            "dealer=False); its correlated randomness comes from the parties' pairwise seeds"
        )


def _base_env(config: Config, extra: Mapping[str, str] | None) -> dict[str, str]:
    # Drop session variables this process may itself have inherited (a launcher started from
    # inside a party); keep the user's settings (CRYPTEN_LITE_NUM_THREADS, config fields).
    keep = {ENV_NUM_THREADS}
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("CRYPTEN_LITE_") and k not in keep)
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    }
    env.update(config.to_env())
    env["PYTHONUNBUFFERED"] = "1"  # relay output line by line
    env.update(extra or {})
    return env


def _run_session(
    mode: list[str],
    processes: list[ProcessEnv],
    *,
    config: Config,
    secret: bytes | None,
    coordinator_bind: str | None,
    run_dir: Path | None,
    out: TextIO | None,
    err: TextIO | None,
    warning: str | None,
    max_time_s: float | None,
) -> Outcome:
    """The spine of :func:`run_local` and :func:`run_rank` (module docstring, steps 1-4).

    Args:
        processes: the processes to start here; ``run_dir`` is filled in, and ``coordinator``
            too when it is empty (the coordinator of this launcher).
        secret: the session secret handed to every child (``None`` for IPC).
        coordinator_bind: where this launcher's coordinator binds (``{run_dir}`` is replaced),
            or ``None`` when another host runs it.
        run_dir: an existing private directory to use (and leave in place), or ``None``.
    """
    first = processes[0]
    with contextlib.ExitStack() as cleanup:
        if run_dir is None:
            run_dir = cleanup.enter_context(private_run_dir())
        coordinator: Coordinator | None = None
        if coordinator_bind is not None:
            coordinator = Coordinator(
                bind=coordinator_bind.format(run_dir=run_dir),
                world_size=first.world_size,
                has_dealer=first.has_dealer,
                transport=config.transport,
                security=Security(secret, first.world_size),
                timeout_s=config.rendezvous_timeout_s,
            )
            cleanup.callback(coordinator.close)
        base = _base_env(config, None)
        specs = []
        for index, process in enumerate(processes):
            process = dataclasses.replace(
                process,
                run_dir=str(run_dir),
                coordinator=process.coordinator or (coordinator.endpoint if coordinator else ""),
            )
            env = {**base, **process.to_env()}
            if len(processes) > 1:  # torchrun's per-host variables, for scripts that read them
                env.update(LOCAL_RANK=str(index), LOCAL_WORLD_SIZE=str(process.world_size))
            name = "dealer" if process.is_dealer else f"party {process.rank}"
            argv = child_argv(["dealer"] if process.is_dealer else mode)
            specs.append(ChildSpec(name, argv, env, is_dealer=process.is_dealer, secret=secret))
        _warn(warning, err)
        if coordinator is not None:
            coordinator.start()
        supervisor = Supervisor(
            specs, run_dir=run_dir, out=out, err=err, coordinator=coordinator, max_time_s=max_time_s
        )
        return supervisor.run()
    raise AssertionError("unreachable")  # pragma: no cover - mypy: ExitStack may swallow


def run_local(
    mode: list[str],
    world_size: int,
    *,
    dealer: bool,
    config: Config,
    run_dir: Path | None = None,
    threads: int | None = None,
    max_time_s: float | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    warning: str | None = None,
) -> Outcome:
    """Run ``world_size`` parties (and the dealer) on this host; see the module docstring.

    Args:
        mode: what each party runs (child arguments, e.g. ``["script", "x.py", "--lr", "1"]``).
        world_size: number of parties.
        dealer: start a dealer process (``config.dealer`` must then be ``"ttp"``).
        config: the session settings passed to every process (transport ``ipc`` or ``tcp``).
        run_dir: an existing private directory to use (and leave in place); by default one is
            created and removed.
        threads: torch threads per process (default: split the cores).
        max_time_s: wall-clock limit of the whole run.
        warning: a line printed on ``err`` once the set-up succeeded, before the parties start.

    Raises:
        ConfigurationError: invalid world size or transport.
        OSError: the coordinator cannot bind.
    """
    if world_size < 2:
        raise ConfigurationError(f"MPC needs at least 2 parties, got {world_size}")
    check_transport(config, multi_host=False)
    check_family(config, world_size, dealer=dealer)
    tcp = config.transport == "tcp"
    count = world_size + (1 if dealer else 0)
    processes = [
        ProcessEnv(
            rank=rank,
            world_size=world_size,
            role="dealer" if rank == world_size else "party",
            coordinator="",  # this launcher's coordinator
            has_dealer=dealer,
            host="127.0.0.1" if tcp else None,
            local_processes=count,
            num_threads=threads,
            launcher_pid=os.getpid(),
        )
        for rank in range(count)
    ]
    return _run_session(
        mode,
        processes,
        config=config,
        secret=generate_secret() if tcp else None,
        coordinator_bind="tcp://127.0.0.1:*" if tcp else "ipc://{run_dir}/coordinator",
        run_dir=run_dir,
        out=out,
        err=err,
        warning=warning,
        max_time_s=max_time_s,
    )


def run_rank(
    mode: list[str],
    *,
    rank: int,
    world_size: int,
    dealer: bool,
    coordinator_host: str,
    coordinator_port: int,
    config: Config,
    secret_file: str | None,
    allow_shared_secret_file: bool = False,
    host: str | None = None,
    local_processes: int = 1,
    threads: int | None = None,
    max_time_s: float | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    warning: str | None = None,
) -> Outcome:
    """Run one rank of a multi-host session on this host (rank ``world_size`` = the dealer).

    Rank 0 also hosts the coordinator on ``coordinator_port`` (all interfaces; CurveZMQ keeps
    processes without the secret out).

    Args:
        secret_file: the shared session secret (else ``CRYPTEN_LITE_SECRET``); refused when
            group or others can access it, unless ``allow_shared_secret_file``.

    Raises:
        ConfigurationError: no usable session secret, or a transport other than TCP.
        OSError: rank 0 cannot bind the coordinator port.
    """
    check_transport(config, multi_host=True)
    check_family(config, world_size, dealer=dealer or rank == world_size)
    secret_value = None if secret_file else os.environ.get(ENV_SECRET)
    if not secret_file and not secret_value:
        raise ConfigurationError(
            "a multi-host session needs a shared session secret: pass --secret-file PATH (same "
            "file content on every host) or set CRYPTEN_LITE_SECRET"
        )
    given = ProcessEnv(
        rank=rank,
        world_size=world_size,
        role="dealer" if rank == world_size else "party",
        coordinator=f"tcp://{coordinator_host}:{coordinator_port}",
        has_dealer=dealer or rank == world_size,
        secret_file=os.path.abspath(secret_file) if secret_file else None,
        secret=secret_value,
        host=host,
        local_processes=local_processes,
        num_threads=threads,
        launcher_pid=os.getpid(),
    )
    # Fail here, with exit code 2, if the secret is unusable; the child gets it by pipe.
    secret = given.load_secret(allow_shared_file=allow_shared_secret_file)
    process = dataclasses.replace(given, secret_file=None, secret=None)
    return _run_session(
        mode,
        [process],
        config=config,
        secret=secret,
        coordinator_bind=f"tcp://*:{coordinator_port}" if rank == 0 else None,
        run_dir=None,
        out=out,
        err=err,
        warning=warning,
        max_time_s=max_time_s,
    )
