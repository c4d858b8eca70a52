"""The ``crypten-lite`` command line: bad input, the demo, multi-host mode, crashes, a party
that never arrives, a wrong secret, and Ctrl-C — with no process left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crypten_lite.launcher.cli import main

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[2]
CliRunner = Callable[..., subprocess.CompletedProcess[str]]

# A party that waits until it is stopped (never on its own: a launcher that fails to stop it
# makes the test time out). Its pid file appears whole (written aside, then renamed), so a
# test may read it as soon as it exists.
WAITER = """
import os, subprocess, sys, threading
from pathlib import Path
import crypten_lite
party = crypten_lite.init()
pids = Path(sys.argv[1])
child = subprocess.Popen(["sleep", "600"])  # a grandchild: must be stopped too
tmp = pids / f"{party.rank}.tmp"
tmp.write_text(f"{os.getpid()} {child.pid}")
os.replace(tmp, pids / f"{party.rank}.pid")
if party.rank == 1 and "--crash" in sys.argv:
    raise RuntimeError("boom")
threading.Event().wait()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret(path: Path, value: str) -> str:
    path.write_text(value)
    path.chmod(0o600)  # a secret readable by others is refused (see test_secret_permissions)
    return str(path)


def _pids(folder: Path) -> list[int]:
    return [int(p) for f in folder.glob("*.pid") for p in f.read_text().split()]


def _left_behind(pids: list[int], alive: Callable[[int], bool]) -> list[int]:
    """The processes of ``pids`` still alive once the launcher has returned.

    A SIGKILLed process takes a moment to die (the kernel tears it down asynchronously), so
    wait for that event, bounded; a process that survives the bound was really left behind.
    """
    deadline = time.monotonic() + 10.0
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["launch", "-n", "1", "SCRIPT"], "-n must be at least 2"),
        (["launch", "-n", "2"], "no script given"),
        (["launch", "-n", "2", "no/such/script.py"], "script not found"),
        (["launch", "-n", "2", "--transport", "udp", "SCRIPT"], "invalid choice: 'udp'"),
        (["launch", "-n", "two", "SCRIPT"], "invalid int value"),
        (["launch", "SCRIPT"], "give -n N"),
        (["launch", "-n", "2", "--timeout", "-1", "SCRIPT"], "must be positive"),
        (
            ["launch", "--rank", "1", "--world-size", "2", "--coordinator", "h:1", "SCRIPT"],
            "secret",
        ),
        (
            ["launch", "--rank", "0", "--world-size", "2", "--coordinator", "h:0", "SCRIPT"],
            "HOST:PORT",
        ),
        (["launch", "--rank", "5", "--world-size", "2", "--coordinator", "h:1", "SCRIPT"], "range"),
        ([], "choose a command"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RANK", "SLURM_PROCID", "CRYPTEN_LITE_SECRET", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    script = str(REPO / "examples" / "hello_exchange.py")
    assert main([script if a == "SCRIPT" else a for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("crypten-lite: error: "), err
    assert expected in err


def test_a_secret_file_readable_by_others_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key"
    key.write_text("s" * 32)
    key.chmod(0o644)
    argv = ["launch", "--rank", "1", "--world-size", "2", "--coordinator", "127.0.0.1:1"]
    argv += ["--secret-file", str(key), str(REPO / "examples" / "hello_exchange.py")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has mode 0644" in err and "chmod 600" in err, err


def test_the_secret_command_writes_mode_0600(tmp_path: Path) -> None:
    key = tmp_path / "session.key"
    assert main(["secret", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert main(["secret", str(key)]) == 2  # never overwrites


def test_busy_coordinator_port_is_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(
            [
                "launch",
                "--rank",
                "0",
                "--world-size",
                "2",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--secret-file",
                _secret(tmp_path / "key", "s" * 32),
                str(REPO / "examples" / "hello_exchange.py"),
            ]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot bind the coordinator" in err, err


def test_bad_input_through_the_real_command(cli: CliRunner) -> None:
    result = cli("launch", "-n", "1", "examples/hello_exchange.py", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "crypten-lite: error: -n must be at least 2 (MPC needs two parties), got 1"
    ]


# ----------------------------------------------------------------- happy paths
def test_demo_runs_with_the_dealer_process_and_prefixed_output(cli: CliRunner) -> None:
    result = cli("launch", "-n", "2", "--dealer", "--timeout", "20", "examples/hello_exchange.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(
        line.startswith(("[party 0] ", "[party 1] ", "[dealer] ")) for line in lines
    )
    for rank in (0, 1):
        assert f"[party {rank}] sum of everybody's inputs: [4.5, -6.0, 0.75]" in result.stdout
        assert f"[party {rank}] op " in result.stdout  # the statistics table
    assert "[dealer] served 1 items" in result.stdout
    assert "INSECURE" not in result.stderr


def test_multi_host_mode_with_a_separate_dealer(tmp_path: Path) -> None:
    port = _free_port()
    key = _secret(tmp_path / "key", "a shared session secret, 32+ bytes long")
    common = ["--world-size", "2", "--coordinator", f"127.0.0.1:{port}", "--secret-file", key]
    common += ["--dealer", "--timeout", "20"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEN_LITE_")}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "crypten_lite.launcher", "launch", "--rank", rank, *common]
            + ([] if rank == "dealer" else ["examples/hello_exchange.py"]),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in ("0", "1", "dealer")
    ]
    outputs = [p.communicate(timeout=90) for p in runs]
    for p, (_, err) in zip(runs, outputs, strict=True):
        assert p.returncode == 0, err
    assert "[party 0] sum of everybody's inputs: [4.5, -6.0, 0.75]" in outputs[0][0]
    assert "[party 1] sum of everybody's inputs: [4.5, -6.0, 0.75]" in outputs[1][0]
    assert "[dealer] served 1 items" in outputs[2][0]


# ----------------------------------------------------------------- failures
@pytest.mark.timeout(180)
def test_a_crashing_party_stops_everything(
    cli: CliRunner, tmp_path: Path, alive: Callable[[int], bool]
) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    # Party 0 waits forever: only the launcher reacting to party 1's crash can end this run.
    result = cli(
        "launch", "-n", "2", "--timeout", "600", str(script), str(tmp_path), "--crash", timeout=120
    )
    assert result.returncode == 1
    err = result.stderr
    assert "INSECURE" in err.splitlines()[0]  # no --dealer: the one-line warning
    assert "crypten-lite: party 1 failed (exit code 1); stopped the other processes" in err
    report = err[err.index("crypten-lite: party 1 failed") :]
    assert "Traceback (most recent call last)" in report
    assert "RuntimeError: boom" in report
    pids = _pids(tmp_path)
    assert len(pids) == 4
    assert not _left_behind(pids, alive), "processes were left behind"


def test_a_party_that_never_arrives_is_named(cli: CliRunner, tmp_path: Path) -> None:
    key = _secret(tmp_path / "key", "s" * 32)
    result = cli(
        "launch",
        "--rank",
        "0",
        "--world-size",
        "3",
        "--coordinator",
        f"127.0.0.1:{_free_port()}",
        "--secret-file",
        key,
        "--dealer",
        "--timeout",
        "3",
        "examples/hello_exchange.py",
    )
    assert result.returncode == 1
    assert (
        "party 1, party 2, the dealer did not arrive within 3 s of the first (arrived: party 0)"
        in result.stderr
    )


def test_a_different_secret_is_rejected_with_a_clear_message(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEN_LITE_")}
    runs = []
    for rank, secret in (
        ("0", "the right secret, long enough"),
        ("1", "a wrong secret, also long"),
    ):
        key = _secret(tmp_path / f"key{rank}", secret)
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "crypten_lite.launcher", "launch", "--rank", rank]
                + ["--world-size", "2", "--coordinator", f"127.0.0.1:{port}", "--secret-file", key]
                + ["--timeout", "5", "examples/hello_exchange.py"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    (_, err0), (_, err1) = (p.communicate(timeout=60) for p in runs)
    assert runs[1].returncode == 1
    assert "refused the CURVE handshake" in err1 and "session secret differs" in err1
    assert runs[0].returncode == 1
    assert "party 1 did not arrive within 5 s of the first (arrived: party 0)" in err0
    assert "failed the CURVE handshake" in err0


# A terminal's Ctrl-C reaches a process whose SIGINT has its default disposition. A suite run
# as a background job of a non-interactive shell (as CI may run it) inherits SIGINT *ignored*,
# and so would the launcher, which then rightly ignores the signal (as any Unix tool does): the
# launcher is started here with the default disposition restored, so that the test does not
# depend on how the suite itself was started.
_WITH_DEFAULT_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'crypten-lite'; runpy.run_module('crypten_lite.launcher', run_name='__main__')"
)


@pytest.mark.timeout(180)
def test_ctrl_c_stops_every_process(tmp_path: Path, alive: Callable[[int], bool]) -> None:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEN_LITE_")}
    launcher = subprocess.Popen(
        [sys.executable, "-c", _WITH_DEFAULT_SIGINT, "launch", "-n", "2", "--dealer"]
        + [str(script), str(tmp_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the event: both pid files exist (written whole, see WAITER)
        launcher.send_signal(signal.SIGINT)
        # A hang guard only: stopping is a 2 s grace per process group, but on a machine at
        # load 15 (two suites and a benchmark at once) the launcher once took over 30 s.
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, err
    assert "interrupted" in err
    pids = _pids(tmp_path)
    assert len(pids) == 4
    assert not _left_behind(pids, alive), "processes were left behind"
