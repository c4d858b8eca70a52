"""Layer L6: starting party processes, relaying their output, and stopping them all together.

Process model: each party (and the dealer) is a child process started with
``start_new_session=True``, so it leads its own process group; stopping a child means signalling
its whole group (``SIGTERM``, then ``SIGKILL`` after ``stop_grace_s``), which also catches any
process the party started itself. Children also ask the kernel to kill them if the launcher
dies (``PR_SET_PDEATHSIG``, see :mod:`crypten_lite.launcher.child`), so even ``kill -9`` of the
launcher leaves nothing behind.

Supervision rules (:meth:`Supervisor.run`):

* a party or the dealer exiting non-zero, or the rendezvous failing, stops every other process
  at once; the outcome names the first failure (a party's rather than the dealer's, which is
  usually a consequence) and carries its traceback (from the failure report the child wrote,
  else from the tail of its stderr);
* when every party has exited 0 the dealer is stopped and the run succeeded;
* ``max_time_s`` bounds the whole run; Ctrl-C (``KeyboardInterrupt``) or :class:`Interrupted`
  (raised by the CLI's ``SIGTERM`` handler) stop everything as well.

Every line a child prints is relayed with a prefix: ``[party 1] ...`` on stdout or stderr.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from crypten_lite.launcher.rendezvous import Coordinator
from crypten_lite.launcher.session import ENV_SECRET_FD

__all__ = ["ChildSpec", "Interrupted", "Outcome", "Supervisor", "failure_file"]

_POLL_S = 0.05
_ROOT_CAUSE_WAIT_S = 2.0
_TAIL_LINES = 200


class Interrupted(BaseException):
    """The launcher was asked to stop (SIGTERM/SIGHUP); handled like Ctrl-C."""


def failure_file(run_dir: Path, name: str) -> Path:
    """Where the child called ``name`` ("party 1", "dealer") writes its traceback on failure."""
    return run_dir / f"failure-{name.replace(' ', '-')}.txt"


@dataclass
class ChildSpec:
    """One process to start: ``name`` is ``"party <r>"`` or ``"dealer"``.

    ``secret``, when given, reaches the child through an inherited pipe named by
    ``CRYPTEN_LITE_SECRET_FD`` (written and closed before the child runs; never a file).
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    is_dealer: bool = False
    secret: bytes | None = field(default=None, repr=False)


@dataclass
class Outcome:
    """How a supervised run ended.

    Attributes:
        exit_code: 0 on success, 1 when a process or the rendezvous failed, 124 on
            ``max_time_s``, 130 when interrupted.
        failed: the name of the first process that failed ("party 1", "dealer"), if any.
        message: one line saying what happened.
        traceback: the failing process's traceback text ("" if unknown).
    """

    exit_code: int
    failed: str | None = None
    message: str = ""
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def report(self) -> str:
        """The message, followed by the traceback when there is one."""
        if not self.traceback:
            return self.message
        return f"{self.message}\n{self.traceback.rstrip()}"


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_TAIL_LINES)
    )
    relays: list[threading.Thread] = field(default_factory=list)
    returncode: int | None = None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


class Supervisor:
    """Runs a set of child processes as one session (rules in the module docstring).

    Args:
        children: the processes to start, parties first.
        run_dir: the launcher's private directory (failure reports are read from it).
        out: where relayed stdout lines go (default ``sys.stdout``).
        err: where relayed stderr lines and the launcher's messages go (default ``sys.stderr``).
        coordinator: the rendezvous coordinator to watch for failures, if this launcher runs it.
        max_time_s: stop everything after this many seconds (``None``: no limit).
        stop_grace_s: seconds between ``SIGTERM`` and ``SIGKILL`` when stopping.
    """

    def __init__(
        self,
        children: list[ChildSpec],
        *,
        run_dir: Path,
        out: TextIO | None = None,
        err: TextIO | None = None,
        coordinator: Coordinator | None = None,
        max_time_s: float | None = None,
        stop_grace_s: float = 2.0,
    ) -> None:
        self._specs = children
        self._run_dir = run_dir
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        self._coordinator = coordinator
        self._max_time_s = max_time_s
        self._stop_grace_s = stop_grace_s
        self._lock = threading.Lock()
        self._children: list[_Child] = []

    # ----------------------------------------------------------------- output relay
    def _relay(self, child: _Child, pipe: IO[bytes], sink: TextIO, is_err: bool) -> None:
        prefix = f"[{child.spec.name}] "
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if is_err:
                child.stderr_tail.append(line)
            with self._lock:
                try:
                    sink.write(prefix + line + "\n")
                    sink.flush()
                except (OSError, ValueError):
                    pass  # our own stream closed (e.g. a broken pipe); keep draining the child
        pipe.close()

    def _start(self, spec: ChildSpec) -> _Child:
        env = spec.env
        pass_fds: tuple[int, ...] = ()
        if spec.secret is not None:
            # A pipe holds the secret: 64 bytes fit its buffer, so the write cannot block, and
            # the child's read ends at EOF because this end is closed before it starts.
            read_end, write_end = os.pipe()
            with os.fdopen(write_end, "wb") as secret_pipe:
                secret_pipe.write(spec.secret)
            env, pass_fds = {**env, ENV_SECRET_FD: str(read_end)}, (read_end,)
        try:
            proc = subprocess.Popen(
                spec.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=pass_fds,
                start_new_session=True,  # own process group: stop it and its descendants together
            )
        finally:
            for fd in pass_fds:
                os.close(fd)
        child = _Child(spec, proc)
        assert proc.stdout is not None and proc.stderr is not None
        for pipe, sink, is_err in ((proc.stdout, self._out, False), (proc.stderr, self._err, True)):
            t = threading.Thread(target=self._relay, args=(child, pipe, sink, is_err), daemon=True)
            t.start()
            child.relays.append(t)
        return child

    # ----------------------------------------------------------------- supervision
    def run(self) -> Outcome:
        """Start every child, supervise until the session ends, and stop whatever is left."""
        start = time.monotonic()
        try:
            for spec in self._specs:
                self._children.append(self._start(spec))
            return self._supervise(start)
        except (KeyboardInterrupt, Interrupted):
            return Outcome(130, message="crypten-lite: interrupted; stopped every process")
        finally:
            self._stop_all()

    def _supervise(self, start: float) -> Outcome:
        # A dealer-only launcher (multi-host ``--rank dealer``) waits for the dealer itself.
        parties = [c for c in self._children if not c.spec.is_dealer] or self._children
        while True:
            coordinator = self._coordinator
            if coordinator is not None and coordinator.error is not None:
                return Outcome(1, message=f"crypten-lite: {coordinator.error}")
            for child in self._children:
                if child.returncode is not None:
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                child.returncode = code
                if code != 0:
                    return self._failure(self._root_cause(child))
            if all(c.returncode == 0 for c in parties):
                return Outcome(0, message="crypten-lite: every party finished")
            if self._max_time_s is not None and time.monotonic() - start > self._max_time_s:
                running = [c.spec.name for c in self._children if c.returncode is None]
                return Outcome(
                    124,
                    message=f"crypten-lite: stopped after --max-time {self._max_time_s:g} s; "
                    f"still running: {', '.join(running)}",
                )
            time.sleep(_POLL_S)

    def _root_cause(self, first: _Child) -> _Child:
        """The failure to report: a party's rather than the dealer's, when both fail.

        The dealer fails *because* party 0 vanished; if the dealer's exit is seen first, give
        the parties ``_ROOT_CAUSE_WAIT_S`` to show their own failure.
        """
        if not first.spec.is_dealer or all(c.spec.is_dealer for c in self._children):
            return first
        deadline = time.monotonic() + _ROOT_CAUSE_WAIT_S
        while time.monotonic() < deadline:
            for child in self._children:
                if child.spec.is_dealer or child.returncode is not None:
                    continue
                child.returncode = child.proc.poll()
                if child.returncode not in (None, 0):
                    return child
            time.sleep(_POLL_S)
        return first

    def _failure(self, child: _Child) -> Outcome:
        name, code = child.spec.name, child.returncode
        assert code is not None
        how = f"exit code {code}" if code > 0 else f"killed by {_signal_name(code)}"
        # Wait for the relay to drain, so the stderr tail is complete.
        for t in child.relays:
            t.join(2.0)
        report = failure_file(self._run_dir, name)
        try:
            text = report.read_text(errors="replace")
        except OSError:
            text = "\n".join(child.stderr_tail)
        return Outcome(
            1,
            failed=name,
            message=f"crypten-lite: {name} failed ({how}); stopped the other processes",
            traceback=text,
        )

    def _stop_all(self) -> None:
        """SIGTERM every child's process group, then SIGKILL what is left after the grace."""
        for child in self._children:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_grace_s
        while time.monotonic() < deadline and any(_group_alive(c.proc) for c in self._children):
            time.sleep(0.02)
        for child in self._children:
            _signal_group(child.proc, signal.SIGKILL)
        for child in self._children:
            try:
                child.proc.wait(2.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
            for t in child.relays:
                t.join(1.0)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    proc.poll()  # reap the leader, so a finished leader does not count as alive
    try:
        os.killpg(proc.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
