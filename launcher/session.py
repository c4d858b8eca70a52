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
``CRYPTEN_LITE_SECRET_FD``         an inherited pipe holding the session secret (what the
                                   launcher uses: no file, no variable holds the secret), or
``CRYPTEN_LITE_SECRET_FILE``       a file holding the session secret, or
``CRYPTEN_LITE_SECRET``            the session secret itself (processes started by other tools)
``CRYPTEN_LITE_HOST``              address this host's parties bind and advertise (TCP)
``CRYPTEN_LITE_LOCAL_PROCESSES``   crypten-lite processes on this host (splits the cores)
``CRYPTEN_LITE_NUM_THREADS``       torch intra-op threads per process (overrides the split)
``CRYPTEN_LITE_LAUNCHER_PID``      the supervising launcher (children exit if it dies)
=================================  ==========================================================

The private run directory (:func:`private_run_dir`) is named ``crypten-lite-<launcher pid>-*``
and never outlives its launcher: the launcher removes it on every exit path it controls; a
*janitor* process started with it removes it when the launcher dies without cleaning up
(``kill -9``: the janitor sees its pipe from the launcher close); and every launch first sweeps
the directories of launchers that are dead, in case the janitor was killed too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from crypten_lite.errors import ConfigurationError
from crypten_lite.launcher.security import load_secret, read_secret_fd

__all__ = [
    "ENV_COORDINATOR",
    "ENV_LAUNCHER_PID",
    "ENV_NUM_THREADS",
    "ENV_ROLE",
    "ENV_RUN_DIR",
    "ENV_SECRET",
    "ENV_SECRET_FD",
    "ENV_SECRET_FILE",
    "ProcessEnv",
    "intra_op_threads",
    "make_run_dir",
    "private_run_dir",
    "remove_run_dir",
    "sweep_stale_run_dirs",
]

ENV_ROLE = "CRYPTEN_LITE_ROLE"
ENV_COORDINATOR = "CRYPTEN_LITE_COORDINATOR"
ENV_HAS_DEALER = "CRYPTEN_LITE_HAS_DEALER"
ENV_RUN_DIR = "CRYPTEN_LITE_RUN_DIR"
ENV_SECRET_FILE = "CRYPTEN_LITE_SECRET_FILE"
ENV_SECRET = "CRYPTEN_LITE_SECRET"
ENV_SECRET_FD = "CRYPTEN_LITE_SECRET_FD"
ENV_HOST = "CRYPTEN_LITE_HOST"
ENV_LOCAL_PROCESSES = "CRYPTEN_LITE_LOCAL_PROCESSES"
ENV_NUM_THREADS = "CRYPTEN_LITE_NUM_THREADS"
ENV_LAUNCHER_PID = "CRYPTEN_LITE_LAUNCHER_PID"

# Unix socket paths are limited to ~107 bytes; leave room for "/rank-NN".
_MAX_RUN_DIR_CHARS = 80


_RUN_DIR_PREFIX = "crypten-lite-"
_LOCK = ".lock"
_RUN_DIR_NAME = re.compile(r"crypten-lite-(\d+)-")

# The janitor: blocks on its stdin, a pipe whose only writer is the launcher, so it wakes up
# (EOF) exactly when the launcher exits, however it exits, and removes the directory. It runs
# with -I (no site, no user paths): nothing to import but the standard library, a few ms.
_JANITOR = """
import shutil, sys, os
sys.stdin.buffer.read()
for _ in range(100):  # a dying child may still create a file while the tree is removed
    shutil.rmtree(sys.argv[1], ignore_errors=True)
    if not os.path.exists(sys.argv[1]):
        break
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _temp_roots() -> list[Path]:
    return list(dict.fromkeys([Path(tempfile.gettempdir()), Path("/tmp")]))


def _lock_is_free(path: Path) -> bool:
    """Whether nobody holds the run directory's ``.lock`` (absent: nobody ever took it)."""
    try:
        fd = os.open(path / _LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the probe's lock
    return True


def sweep_stale_run_dirs() -> list[Path]:
    """Remove this user's run directories whose launcher (the pid in the name) is dead.

    Two tests, both conservative: the pid must name no process (a reused pid keeps a stale
    directory until that process exits too), and the directory's ``.lock`` must be free — a
    live launcher in another pid namespace sharing this temporary directory holds its lock, so
    its directory is never taken for stale. Returns the directories removed.
    """
    removed = []
    for root in _temp_roots():
        try:
            entries = list(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _RUN_DIR_NAME.match(entry.name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            try:
                if entry.is_symlink() or entry.stat().st_uid != os.getuid():
                    continue
            except OSError:
                continue
            if not _pid_alive(int(match.group(1))) and _lock_is_free(entry):
                remove_run_dir(entry)
                removed.append(entry)
    return removed


def make_run_dir() -> Path:
    """Create this launcher's private directory (mode 0700, only this user can enter it)."""
    prefix = f"{_RUN_DIR_PREFIX}{os.getpid()}-"
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if len(str(path)) > _MAX_RUN_DIR_CHARS:
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o700)  # mkdtemp already does; be explicit, it is the IPC security boundary
    return path


def remove_run_dir(path: Path) -> None:
    """Delete the private directory and everything in it."""
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def private_run_dir() -> Iterator[Path]:
    """A private run directory for one launch, removed however the launcher ends.

    Sweeps stale directories first, creates the directory, starts its janitor (module
    docstring), and on exit removes the directory and releases the janitor.
    """
    sweep_stale_run_dirs()
    path = make_run_dir()
    janitor: subprocess.Popen[bytes] | None = None
    lock = -1
    try:
        # Held until this launcher exits (the kernel drops it even after kill -9).
        lock = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        janitor = subprocess.Popen(
            [sys.executable, "-I", "-c", _JANITOR, str(path)],
            env={},  # needs nothing; and no session variable makes it look like a party
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on the terminal's group must not kill it first
        )
        yield path
    finally:
        remove_run_dir(path)
        if lock >= 0:
            os.close(lock)
        if janitor is not None:
            assert janitor.stdin is not None
            janitor.stdin.close()  # EOF: the janitor finds the directory gone and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                janitor.wait(5.0)


# Secrets read from inherited pipes, by fd: a pipe can be read only once per process.
_FD_SECRETS: dict[int, bytes] = {}


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
    secret_fd: int | None = None
    host: str | None = None
    local_processes: int = 1
    num_threads: int | None = None
    launcher_pid: int | None = None

    @property
    def is_dealer(self) -> bool:
        return self.role == "dealer"

    def load_secret(self, *, allow_shared_file: bool = False) -> bytes:
        """The session secret (raises :class:`ConfigurationError` when none was given).

        From the inherited pipe if there is one (read once per process, then remembered: the
        pipe is consumed), else from the file, else from the value.
        """
        if self.secret_fd is not None:
            if self.secret_fd not in _FD_SECRETS:
                _FD_SECRETS[self.secret_fd] = read_secret_fd(self.secret_fd)
            return _FD_SECRETS[self.secret_fd]
        if self.secret_file is None and self.secret is None:
            raise ConfigurationError(
                f"no session secret: set {ENV_SECRET_FILE} or {ENV_SECRET} (the launcher does "
                "this; across hosts pass --secret-file to every `crypten-lite launch`)"
            )
        return load_secret(
            path=self.secret_file, value=self.secret, allow_shared_file=allow_shared_file
        )

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
            ENV_SECRET_FD: None if self.secret_fd is None else str(self.secret_fd),
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
        secret_fd = _int(env, ENV_SECRET_FD) if env.get(ENV_SECRET_FD) else None
        return ProcessEnv(
            rank=rank,
            world_size=world_size,
            role=role,
            coordinator=coordinator,
            has_dealer=has_dealer or role == "dealer",
            run_dir=env.get(ENV_RUN_DIR) or None,
            secret_file=env.get(ENV_SECRET_FILE) or None,
            secret=env.get(ENV_SECRET) or None,
            secret_fd=secret_fd,
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
