"""Layer L6: a whole session on this host — N parties, optionally the dealer, and the coordinator.

:func:`run_local` is what ``crypten-lite launch -n N`` and :func:`crypten_lite.launch` do:

1. create a private run directory (mode 0700, removed at the end);
2. for TCP, generate a random session secret and write it to ``<run dir>/secret`` (mode 0600),
   which children read through ``CRYPTEN_LITE_SECRET_FILE`` — it never appears in an
   environment variable or on a command line;
3. start the coordinator in this process (IPC: ``<run dir>/coordinator``; TCP: a random port
   on 127.0.0.1, CurveZMQ);
4. start the party processes (and the dealer) and supervise them
   (:class:`~crypten_lite.launcher.supervisor.Supervisor`).

:func:`run_rank` is the multi-host counterpart: one rank on this host, and the coordinator too
when the rank is 0.
"""

from __future__ import annotations

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
    make_run_dir,
    remove_run_dir,
)
from crypten_lite.launcher.supervisor import ChildSpec, Outcome, Supervisor

__all__ = ["child_argv", "run_local", "run_rank"]

_CHILD = [sys.executable, "-m", "crypten_lite.launcher.child"]


def child_argv(mode: list[str]) -> list[str]:
    """The command line of a child process running ``mode`` (see :mod:`.child`)."""
    return [*_CHILD, *mode]


def _warn(warning: str | None, err: TextIO | None) -> None:
    if warning:
        stream = err or sys.stderr
        stream.write(warning + "\n")
        stream.flush()


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
    if config.transport not in ("ipc", "tcp"):
        raise ConfigurationError(f"transport must be 'ipc' or 'tcp', got {config.transport!r}")
    own_dir = run_dir is None
    run_dir = make_run_dir() if run_dir is None else run_dir
    coordinator: Coordinator | None = None
    try:
        secret_file: str | None = None
        security = Security(None, world_size)
        if config.transport == "tcp":
            secret = generate_secret()
            path = run_dir / "secret"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secret)
            secret_file = str(path)
            security = Security(secret, world_size)
            bind = "tcp://127.0.0.1:*"
        else:
            bind = f"ipc://{run_dir}/coordinator"
        coordinator = Coordinator(
            bind=bind,
            world_size=world_size,
            has_dealer=dealer,
            transport=config.transport,
            security=security,
            timeout_s=config.rendezvous_timeout_s,
        )
        processes = world_size + (1 if dealer else 0)
        base = _base_env(config, None)
        specs = []
        for rank in range(processes):
            is_dealer = rank == world_size
            process = ProcessEnv(
                rank=rank,
                world_size=world_size,
                role="dealer" if is_dealer else "party",
                coordinator=coordinator.endpoint,
                has_dealer=dealer,
                run_dir=str(run_dir),
                secret_file=secret_file,
                host="127.0.0.1" if config.transport == "tcp" else None,
                local_processes=processes,
                num_threads=threads,
                launcher_pid=os.getpid(),
            )
            env = {**base, **process.to_env(), "LOCAL_RANK": str(rank)}
            env["LOCAL_WORLD_SIZE"] = str(world_size)
            specs.append(
                ChildSpec(
                    name="dealer" if is_dealer else f"party {rank}",
                    argv=child_argv(["dealer"] if is_dealer else mode),
                    env=env,
                    is_dealer=is_dealer,
                )
            )
        _warn(warning, err)
        coordinator.start()
        supervisor = Supervisor(
            specs,
            run_dir=run_dir,
            out=out,
            err=err,
            coordinator=coordinator,
            max_time_s=max_time_s,
        )
        return supervisor.run()
    finally:
        if coordinator is not None:
            coordinator.close()
        if own_dir:
            remove_run_dir(run_dir)


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

    Raises:
        ConfigurationError: no session secret, or a transport other than TCP.
        OSError: rank 0 cannot bind the coordinator port.
    """
    if config.transport != "tcp":
        raise ConfigurationError("across hosts the transport must be tcp (--transport tcp)")
    secret_value = None if secret_file else os.environ.get(ENV_SECRET)
    if not secret_file and not secret_value:
        raise ConfigurationError(
            "a multi-host session needs a shared session secret: pass --secret-file PATH (same "
            "file content on every host) or set CRYPTEN_LITE_SECRET"
        )
    process = ProcessEnv(
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
    secret = process.load_secret()  # fail here, with exit code 2, if it is unusable
    run_dir = make_run_dir()
    coordinator: Coordinator | None = None
    try:
        process = dataclasses.replace(process, run_dir=str(run_dir))
        if rank == 0:
            coordinator = Coordinator(
                bind=f"tcp://*:{coordinator_port}",
                world_size=world_size,
                has_dealer=dealer,
                transport="tcp",
                security=Security(secret, world_size),
                timeout_s=config.rendezvous_timeout_s,
            )
        name = "dealer" if process.is_dealer else f"party {rank}"
        env = {**_base_env(config, None), **process.to_env()}
        spec = ChildSpec(
            name=name,
            argv=child_argv(["dealer"] if process.is_dealer else mode),
            env=env,
            is_dealer=process.is_dealer,
        )
        _warn(warning, err)
        if coordinator is not None:
            coordinator.start()
        return Supervisor(
            [spec],
            run_dir=run_dir,
            out=out,
            err=err,
            coordinator=coordinator,
            max_time_s=max_time_s,
        ).run()
    finally:
        if coordinator is not None:
            coordinator.close()
        remove_run_dir(run_dir)
