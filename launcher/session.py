"""Layer L6: what a launcher tells the processes it starts, and the private run directory.

A party (or dealer) process learns everything about its session from environment variables,
set by the launcher and read back by :meth:`ProcessEnv.from_env` (the launcher layer's one
reader of these variables; :func:`crypten_lite.config.config_from_env` reads the
:class:`~crypten_lite.config.Config` fields):

=================================  ==========================================================
``RANK``, ``WORLD_SIZE``           this party's rank and the number of parties (as torchrun);
                                   the dealer gets ``RANK = WORLD_SIZE``
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``  torchrun's per-host equivalents (informational)
``CRYPTEN_LITE_ROLE``              ``party`` or ``dealer``
``CRYPTEN_LITE_COORDINATOR``       ZeroMQ endpoint of the rendezvous coordinator
``CRYPTEN_LITE_HAS_DEALER``        ``1`` when a dealer process takes part
``CRYPTEN_LITE_RUN_DIR``           private directory (mode 0700) of this host's launcher:
                                   IPC sockets, failure reports, ``launch()`` results
``CRYPTEN_LITE_SECRET_FILE``       file holding the session secret (preferred), or
``CRYPTEN_LITE_SECRET``            the session secret itself (multi-host convenience)
``CRYPTEN_LITE_HOST``              address this host's parties bind and advertise (TCP)
``CRYPTEN_LITE_LOCAL_PROCESSES``   crypten-lite processes on this host (splits the cores)
``CRYPTEN_LITE_NUM_THREADS``       torch intra-op threads per process (overrides the split)
``CRYPTEN_LITE_LAUNCHER_PID``      the supervising launcher (children exit if it dies)
=================================  ==========================================================
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from crypten_lite.errors import ConfigurationError
from crypten_lite.launcher.security import load_secret

__all__ = [
    "ENV_COORDINATOR",
    "ENV_LAUNCHER_PID",
    "ENV_NUM_THREADS",
    "ENV_ROLE",
    "ENV_RUN_DIR",
    "ENV_SECRET",
    "ENV_SECRET_FILE",
    "ProcessEnv",
    "intra_op_threads",
    "make_run_dir",
    "remove_run_dir",
]

ENV_ROLE = "CRYPTEN_LITE_ROLE"
ENV_COORDINATOR = "CRYPTEN_LITE_COORDINATOR"
ENV_HAS_DEALER = "CRYPTEN_LITE_HAS_DEALER"
ENV_RUN_DIR = "CRYPTEN_LITE_RUN_DIR"
ENV_SECRET_FILE = "CRYPTEN_LITE_SECRET_FILE"
ENV_SECRET = "CRYPTEN_LITE_SECRET"
ENV_HOST = "CRYPTEN_LITE_HOST"
ENV_LOCAL_PROCESSES = "CRYPTEN_LITE_LOCAL_PROCESSES"
ENV_NUM_THREADS = "CRYPTEN_LITE_NUM_THREADS"
ENV_LAUNCHER_PID = "CRYPTEN_LITE_LAUNCHER_PID"

# Unix socket paths are limited to ~107 bytes; leave room for "/rank-NN".
_MAX_RUN_DIR_CHARS = 80


def make_run_dir() -> Path:
    """Create this launcher's private directory (mode 0700, only this user can enter it)."""
    path = Path(tempfile.mkdtemp(prefix="crypten-lite-"))
    if len(str(path)) > _MAX_RUN_DIR_CHARS:
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix="crypten-lite-", dir="/tmp"))
    os.chmod(path, 0o700)  # mkdtemp already does; be explicit, it is the IPC security boundary
    return path


def remove_run_dir(path: Path) -> None:
    """Delete the private directory and everything in it."""
    shutil.rmtree(path, ignore_errors=True)


def _int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        raise ConfigurationError(
            f"{name} is not set: this process was not started by `crypten-lite launch` or "
            "crypten_lite.launch()"
        )
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None


@dataclass(frozen=True)
class ProcessEnv:
    """The session as one party or dealer process sees it (see the module docstring)."""

    rank: int
    world_size: int
    role: str
    coordinator: str
    has_dealer: bool
    run_dir: str | None = None
    secret_file: str | None = None
    secret: str | None = None
    host: str | None = None
    local_processes: int = 1
    num_threads: int | None = None
    launcher_pid: int | None = None

    @property
    def is_dealer(self) -> bool:
        return self.role == "dealer"

    def load_secret(self) -> bytes:
        """The session secret (raises :class:`ConfigurationError` when none was given)."""
        if self.secret_file is None and self.secret is None:
            raise ConfigurationError(
                f"no session secret: set {ENV_SECRET_FILE} or {ENV_SECRET} (the launcher does "
                "this; across hosts pass --secret-file to every `crypten-lite launch`)"
            )
        return load_secret(path=self.secret_file, value=self.secret)

    def to_env(self) -> dict[str, str]:
        """The environment variables that make :meth:`from_env` return this object."""
        env = {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            ENV_ROLE: self.role,
            ENV_COORDINATOR: self.coordinator,
            ENV_HAS_DEALER: "1" if self.has_dealer else "0",
            ENV_LOCAL_PROCESSES: str(self.local_processes),
        }
        optional = {
            ENV_RUN_DIR: self.run_dir,
            ENV_SECRET_FILE: self.secret_file,
            ENV_SECRET: self.secret,
            ENV_HOST: self.host,
            ENV_NUM_THREADS: None if self.num_threads is None else str(self.num_threads),
            ENV_LAUNCHER_PID: None if self.launcher_pid is None else str(self.launcher_pid),
        }
        env.update({k: v for k, v in optional.items() if v is not None})
        return env

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None) -> ProcessEnv:
        """Read the variables the launcher set.

        Raises:
            ConfigurationError: a variable is missing or malformed; the message names it.
        """
        env = os.environ if environ is None else environ
        rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        role = env.get(ENV_ROLE, "party")
        has_dealer = env.get(ENV_HAS_DEALER, "0") == "1"
        if role not in ("party", "dealer"):
            raise ConfigurationError(f"{ENV_ROLE}={role!r} must be 'party' or 'dealer'")
        if world_size < 2:
            raise ConfigurationError(f"WORLD_SIZE={world_size}: MPC needs at least 2 parties")
        valid = rank == world_size if role == "dealer" else 0 <= rank < world_size
        if not valid:
            raise ConfigurationError(
                f"RANK={rank} is invalid for a {role} of WORLD_SIZE={world_size}"
            )
        coordinator = env.get(ENV_COORDINATOR)
        if not coordinator:
            raise ConfigurationError(
                f"{ENV_COORDINATOR} is not set: this process was not started by "
                "`crypten-lite launch` or crypten_lite.launch()"
            )
        local = _int(env, ENV_LOCAL_PROCESSES) if env.get(ENV_LOCAL_PROCESSES) else 1
        num_threads = _int(env, ENV_NUM_THREADS) if env.get(ENV_NUM_THREADS) else None
        pid = env.get(ENV_LAUNCHER_PID)
        return ProcessEnv(
            rank=rank,
            world_size=world_size,
            role=role,
            coordinator=coordinator,
            has_dealer=has_dealer or role == "dealer",
            run_dir=env.get(ENV_RUN_DIR) or None,
            secret_file=env.get(ENV_SECRET_FILE) or None,
            secret=env.get(ENV_SECRET) or None,
            host=env.get(ENV_HOST) or None,
            local_processes=max(1, local),
            num_threads=num_threads,
            launcher_pid=int(pid) if pid and pid.isdigit() else None,
        )


def intra_op_threads(local_processes: int, override: int | None = None) -> int:
    """Torch threads per process so the processes on one host split its cores.

    ``max(1, cores // local_processes)``, where ``cores`` counts the CPUs this process may run
    on; ``override`` (``CRYPTEN_LITE_NUM_THREADS``, ``--threads``) wins when given.
    """
    if override is not None:
        if override < 1:
            raise ConfigurationError(f"{ENV_NUM_THREADS} must be >= 1, got {override}")
        return override
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))
