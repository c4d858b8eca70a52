"""Start crypten-lite sessions across the hosts of a :class:`~tests.netns.network.Network`.

A :class:`MultiHostSession` runs one ``crypten-lite launch`` per rank, each in its own host
namespace, exactly as an operator would on separate machines:

* parties ``0 .. N-1`` on ``hosts[0 .. N-1]``, the dealer (when there is one) on ``hosts[N]``;
* rank 0's launcher hosts the coordinator on ``hosts[0].address:port``;
* ``style="cli"``: ``--rank R --world-size N --coordinator HOST:PORT --secret-file F``;
  ``style="torchrun"``: the parties get ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
  ``MASTER_PORT`` instead of flags (the dealer, which torchrun does not know, is started with
  ``--rank dealer`` and the same variables);
* timeouts go through the environment (``CRYPTEN_LITE_TIMEOUT``,
  ``CRYPTEN_LITE_RENDEZVOUS_TIMEOUT``), one torch thread per process.

:func:`single_host` runs the same script with ``crypten-lite launch -n N`` on this host, the
reference the multi-host results are compared with.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns.network import Host, Network
from tests.netns.procs import Proc

__all__ = [
    "TAG_ENV",
    "MultiHostSession",
    "RankOptions",
    "clean_env",
    "launcher_argv",
    "parse_result",
    "single_host",
    "write_secret",
]

# Every process a test starts carries this variable (the launcher passes it on to its
# children), so leftovers can be found in /proc even outside the test namespaces.
TAG_ENV = "CLE2E_TAG"
_SESSION_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_NTASKS_PER_NODE",
)


def launcher_argv() -> list[str]:
    """The ``crypten-lite`` command of this interpreter (works without the console script)."""
    return [sys.executable, "-m", "crypten_lite.launcher"]


def clean_env(tag: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any session settings, plus the test ``tag``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CRYPTEN_LITE_") and k not in _SESSION_VARS
    }
    env.update({TAG_ENV: tag, "PYTHONUNBUFFERED": "1", "CRYPTEN_LITE_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


def write_secret(path: Path) -> Path:
    """Write a fresh session secret (64 hex characters, mode 0600) to ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


@dataclass
class RankOptions:
    """Deviations of one rank from the session's settings (for the fault tests).

    Attributes:
        env: extra environment variables of that rank's launcher.
        world_size: a different ``--world-size``.
        secret_file: a different ``--secret-file``.
    """

    env: dict[str, str] = field(default_factory=dict)
    world_size: int | None = None
    secret_file: Path | None = None


class MultiHostSession:
    """One multi-host crypten-lite session over a network (module docstring).

    Args:
        net: the hosts; needs ``world_size + 1`` of them with a dealer.
        world_size: number of parties.
        script: the party script; ``script_args`` its arguments.
        secret_file: the shared session secret.
        dealer: run a dealer on its own host.
        style: ``"cli"`` or ``"torchrun"`` (module docstring).
        timeout_s: ``CRYPTEN_LITE_TIMEOUT`` (seconds to wait for one message).
        rendezvous_timeout_s: ``CRYPTEN_LITE_RENDEZVOUS_TIMEOUT``.
        options: per-rank deviations, keyed by rank (the dealer is ``world_size``).
        port: the coordinator's port on ``hosts[0]``.
        tag: value of :data:`TAG_ENV` for every process (random by default).
        extra_env: environment added to every rank.
    """

    def __init__(
        self,
        net: Network,
        world_size: int,
        script: Path,
        script_args: Sequence[str] = (),
        *,
        secret_file: Path,
        dealer: bool = True,
        style: str = "cli",
        timeout_s: float = 10.0,
        rendezvous_timeout_s: float = 30.0,
        options: Mapping[int, RankOptions] | None = None,
        port: int = 29500,
        tag: str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        if style not in ("cli", "torchrun"):
            raise ValueError(f"style must be 'cli' or 'torchrun', got {style!r}")
        needed = world_size + (1 if dealer else 0)
        if len(net.hosts) < needed:
            raise ValueError(f"{needed} hosts needed, the network has {len(net.hosts)}")
        self.net = net
        self.world_size = world_size
        self.script = script
        self.script_args = list(script_args)
        self.secret_file = secret_file
        self.dealer = dealer
        self.style = style
        self.port = port
        self.tag = tag or uuid.uuid4().hex
        self.options = dict(options or {})
        self.env = clean_env(
            self.tag,
            {
                "CRYPTEN_LITE_TIMEOUT": f"{timeout_s:g}",
                "CRYPTEN_LITE_RENDEZVOUS_TIMEOUT": f"{rendezvous_timeout_s:g}",
                **(extra_env or {}),
            },
        )
        self.procs: dict[int, Proc] = {}

    @property
    def ranks(self) -> list[int]:
        """Every rank of the session, the dealer (``world_size``) last."""
        return list(range(self.world_size + (1 if self.dealer else 0)))

    def name(self, rank: int) -> str:
        return "dealer" if rank == self.world_size else f"party {rank}"

    def host(self, rank: int) -> Host:
        return self.net.hosts[rank]

    @property
    def coordinator(self) -> str:
        return f"{self.net.hosts[0].address}:{self.port}"

    def _argv_env(self, rank: int) -> tuple[list[str], dict[str, str]]:
        opts = self.options.get(rank, RankOptions())
        n = opts.world_size or self.world_size
        secret = str(opts.secret_file or self.secret_file)
        env = {**self.env, **opts.env}
        is_dealer = rank == self.world_size
        argv = [*launcher_argv(), "launch", "--secret-file", secret]
        if self.style == "cli" or is_dealer:
            argv += ["--world-size", str(n), "--coordinator", self.coordinator]
            argv += ["--rank", "dealer" if is_dealer else str(rank)]
        else:
            host, port = self.coordinator.rsplit(":", 1)
            env.update(RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR=host, MASTER_PORT=port)
        if not is_dealer:
            argv += (["--dealer"] if self.dealer else []) + [str(self.script), *self.script_args]
        return argv, env

    def start_rank(self, rank: int) -> Proc:
        """Start the launcher of ``rank`` on its host."""
        argv, env = self._argv_env(rank)
        proc = self.host(rank).spawn(argv, env=env, name=f"{self.name(rank)} launcher")
        self.procs[rank] = proc
        return proc

    def start(self, ranks: Sequence[int] | None = None) -> MultiHostSession:
        """Start the launchers of ``ranks`` (default: all, rank 0 first)."""
        for rank in self.ranks if ranks is None else ranks:
            self.start_rank(rank)
        return self

    def wait(self, timeout_s: float) -> dict[int, int]:
        """Every started launcher's exit code, waiting at most ``timeout_s`` in total.

        Raises:
            TimeoutError: a launcher is still running (all are killed first).
        """
        deadline = time.monotonic() + timeout_s
        codes = {}
        try:
            for rank, proc in self.procs.items():
                codes[rank] = proc.wait(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            self.kill()
            raise TimeoutError(
                f"the session did not end within {timeout_s:g} s\n{self.describe()}"
            ) from None
        return codes

    def kill(self) -> None:
        """SIGKILL every launcher (their children die with them: PR_SET_PDEATHSIG)."""
        for proc in self.procs.values():
            proc.kill()

    def describe(self) -> str:
        """Every launcher's exit status and output, for assertion messages."""
        return "".join(p.describe() for p in self.procs.values())

    def result(self, rank: int) -> dict[str, list[float]]:
        """The ``RESULT {json}`` line party ``rank``'s script printed."""
        return parse_result(self.procs[rank].stdout, rank, self.describe())

    def wait_connected(self, rank: int, timeout_s: float) -> None:
        """Wait until a process of ``rank``'s host has a TCP connection to the coordinator.

        Used to order fault scenarios: a rank that has connected has said hello.
        """
        deadline = time.monotonic() + timeout_s
        port_hex = f"{self.port:04X}"
        while time.monotonic() < deadline:
            for pid in self.host(rank).pids():
                try:
                    table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
                except OSError:
                    continue
                for row in table:
                    cols = row.split()
                    if cols[2].endswith(":" + port_hex) and cols[3] == "01":  # ESTABLISHED
                        return
                break  # every process of the namespace shows the same table
            time.sleep(0.05)
        raise TimeoutError(
            f"{self.name(rank)} did not connect to the coordinator\n{self.describe()}"
        )


def parse_result(stdout: str, rank: int, context: str = "") -> dict[str, list[float]]:
    """Find party ``rank``'s ``RESULT {json}`` line in launcher output."""
    prefix = f"[party {rank}] RESULT "
    for line in stdout.splitlines():
        if line.startswith(prefix):
            return json.loads(line[len(prefix) :])  # type: ignore[no-any-return]
    raise AssertionError(f"no RESULT line from party {rank}\n{context}")


def single_host(
    world_size: int,
    script: Path,
    script_args: Sequence[str] = (),
    *,
    tag: str,
    dealer: bool = True,
    timeout_s: float = 90.0,
) -> Proc:
    """Run ``crypten-lite launch -n N [--dealer] script`` on this host; wait for it to end."""
    argv = [*launcher_argv(), "launch", "-n", str(world_size)]
    argv += (["--dealer"] if dealer else []) + [str(script), *script_args]
    proc = Proc(argv, env=clean_env(tag), name=f"single-host {world_size}-party launcher")
    try:
        proc.wait(timeout_s)
    except TimeoutError:
        proc.kill()
        raise
    return proc
