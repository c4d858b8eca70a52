"""Run-directory hygiene: the launcher's private directory never outlives it, and never holds
the session secret.

The secret reaches every child through an inherited pipe; ``kill -9`` of the launcher is
cleaned up by the run directory's janitor; a directory whose launcher died anyway is swept by
the next launch. Every wait here is for an event (a line printed, the directory gone), bounded
only so that a broken build fails instead of hanging.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crypten_lite.launcher.session import private_run_dir, sweep_stale_run_dirs

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[2]

# Each party reports what it sees of the session, then waits until it is killed.
REPORTER = """
import json, os, threading
import crypten_lite
party = crypten_lite.init()
run_dir = os.environ["CRYPTEN_LITE_RUN_DIR"]
secret_vars = sorted(k for k in os.environ if k.startswith("CRYPTEN_LITE_SECRET"))
print("SEEN " + json.dumps({"pid": os.getpid(), "run_dir": run_dir,
      "files": sorted(os.listdir(run_dir)), "secret_vars": secret_vars}), flush=True)
threading.Event().wait()
"""


def _gone(path: Path, bound_s: float = 30.0) -> bool:
    """Wait for ``path`` to disappear (the event); ``False`` if it is still there at the bound."""
    deadline = time.monotonic() + bound_s
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not path.exists()


@pytest.mark.timeout(180)
def test_kill_9_of_the_launcher_leaves_no_directory_and_no_secret(
    tmp_path: Path, alive: Callable[[int], bool]
) -> None:
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEN_LITE_")}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "crypten_lite.launcher", "launch", "-n", "2", "--dealer"]
        + ["--transport", "tcp", str(script)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    try:
        assert launcher.stdout is not None
        while len(seen) < 2:  # the event: both parties are connected and have looked around
            line = launcher.stdout.readline()
            assert line, "the launcher ended before both parties reported"
            if "SEEN " in line:
                seen.append(json.loads(line.split("SEEN ", 1)[1]))
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    run_dir = Path(seen[0]["run_dir"])
    assert seen[1]["run_dir"] == str(run_dir)
    for report in seen:
        assert not [f for f in report["files"] if "secret" in f], report
        assert report["secret_vars"] == ["CRYPTEN_LITE_SECRET_FD"], report
    assert _gone(run_dir), f"{run_dir} outlived its launcher: {os.listdir(run_dir)}"
    deadline = time.monotonic() + 30
    while any(alive(r["pid"]) for r in seen) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [r["pid"] for r in seen if alive(r["pid"])], "parties outlived their launcher"


def test_the_next_launch_sweeps_directories_of_dead_launchers() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process (reuse within this test is not a concern)
    stale = Path(tempfile.mkdtemp(prefix=f"crypten-lite-{dead.pid}-"))
    (stale / "rank-0").write_text("an IPC socket, once")
    mine = Path(tempfile.mkdtemp(prefix=f"crypten-lite-{os.getpid()}-"))  # a live launcher's
    try:
        assert stale in sweep_stale_run_dirs()
        assert not stale.exists() and mine.exists()
    finally:
        for path in (stale, mine):
            shutil.rmtree(path, ignore_errors=True)


def test_a_locked_directory_is_never_swept() -> None:
    """A launcher in another pid namespace looks dead by its pid, but holds its lock."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    elsewhere = Path(tempfile.mkdtemp(prefix=f"crypten-lite-{dead.pid}-"))
    fd = os.open(elsewhere / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert elsewhere not in sweep_stale_run_dirs() and elsewhere.exists()
        os.close(fd)  # that launcher exits: its lock is free, the directory is stale now
        fd = -1
        assert elsewhere in sweep_stale_run_dirs() and not elsewhere.exists()
    finally:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_private_run_dir_is_removed_on_exit_and_names_its_launcher() -> None:
    with private_run_dir() as run_dir:
        assert run_dir.name.startswith(f"crypten-lite-{os.getpid()}-")
        assert run_dir.stat().st_mode & 0o777 == 0o700
        (run_dir / "result-0.clv").write_bytes(b"x")
    assert not run_dir.exists()
