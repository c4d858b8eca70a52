"""Child processes for the end-to-end tests: captured output, bounded waits, no survivors.

:class:`Proc` starts a command in its own session (process group), reads its stdout and stderr
in background threads, and offers only bounded waits. The ``pids_*`` functions find processes
by scanning ``/proc`` (no psutil): by network namespace, or by a marker environment variable
that every descendant inherits.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "Proc",
    "kill_pids",
    "pids_in_netns",
    "pids_with_env",
    "wait_gone",
]


class Proc:
    """A started command whose output is collected line by line.

    Args:
        argv: the command.
        env: its complete environment.
        name: how error messages name it (e.g. ``"rank 1 launcher"``).
        cwd: working directory.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        name: str,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._cond = threading.Condition()
        self.started = time.monotonic()
        self.ended: float | None = None  # time.monotonic() when it exited
        self.popen = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        # Records when the process ended, whoever waits for it and when.
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        self._readers = [
            threading.Thread(target=self._read, args=(stream, pipe), daemon=True)
            for stream, pipe in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for t in self._readers:
            t.start()

    def _watch(self) -> None:
        self.popen.wait()
        self.ended = time.monotonic()

    def _read(self, stream: str, pipe: object) -> None:
        assert pipe is not None
        for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
            with self._cond:
                self._lines[stream].append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        pipe.close()  # type: ignore[attr-defined]
        with self._cond:
            self._cond.notify_all()

    # ----------------------------------------------------------------- output
    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self._lines["stdout"])

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self._lines["stderr"])

    def describe(self) -> str:
        """Exit status and full output, for assertion messages."""
        return (
            f"--- {self.name} (pid {self.pid}, exit {self.popen.returncode}) ---\n"
            f"[stdout]\n{self.stdout}\n[stderr]\n{self.stderr}\n"
        )

    def wait_for_line(
        self, pattern: str, timeout_s: float, stream: str = "stdout"
    ) -> re.Match[str]:
        """Wait until a line of ``stream`` matches the regular expression ``pattern``.

        Raises:
            TimeoutError: no such line within ``timeout_s``, or the process ended without one.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                lines = self._lines[stream]
                for line in lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(lines)
                remaining = deadline - time.monotonic()
                ended = self.popen.poll() is not None and not any(
                    t.is_alive() for t in self._readers
                )
                if remaining <= 0 or ended:
                    raise TimeoutError(
                        f"{self.name}: no {stream} line matching {pattern!r} within "
                        f"{timeout_s:g} s\n{self.describe()}"
                    )
                self._cond.wait(min(remaining, 0.1))

    # ----------------------------------------------------------------- life cycle
    def wait(self, timeout_s: float) -> int:
        """The exit code, waiting at most ``timeout_s``.

        Raises:
            TimeoutError: still running after ``timeout_s`` (it is left running; call
                :meth:`kill`).
        """
        try:
            code = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.name} still running after {timeout_s:g} s\n{self.describe()}"
            ) from None
        self._watcher.join(1.0)
        for t in self._readers:
            t.join(2.0)
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (the command and whatever stayed in its group)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass


# --------------------------------------------------------------------------- /proc scanning
def _all_pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone
    # The state follows the parenthesised command name, which may itself contain ")".
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


def pids_in_netns(netns_path: str | os.PathLike[str]) -> list[int]:
    """Live (non-zombie) processes whose network namespace is ``netns_path``.

    ``netns_path`` is a namespace file such as ``/run/netns/NAME``; a process belongs to it when
    ``/proc/PID/ns/net`` is the same inode.
    """
    try:
        target = os.stat(netns_path)
    except OSError:
        return []
    found = []
    for pid in _all_pids():
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and not _is_zombie(pid):
            found.append(pid)
    return found


def pids_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment contains ``name=value`` (inherited by descendants)."""
    needle = f"{name}={value}".encode()
    found = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and not _is_zombie(pid):
            found.append(pid)
    return found


def kill_pids(pids: Iterable[int]) -> None:
    """SIGKILL each process (already-gone ones are ignored)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_gone(find: Callable[[], list[int]], timeout_s: float) -> list[int]:
    """Poll ``find()`` (a function returning pids) until it is empty; return what is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = find()
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)
