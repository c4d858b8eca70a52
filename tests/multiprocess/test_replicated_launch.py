"""The replicated family through the launcher: real processes, real ZeroMQ, no dealer process.

One end-to-end run of ``crypten-lite launch -n 3 --protocol replicated`` (inputs from two
parties, a matmul, a product with a view; the children learn the family from
``CRYPTEN_LITE_PROTOCOL``, the variable a user may set instead of the flag), and the refusals
(a dealer, another world size) before any process starts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

CliRunner = Callable[..., subprocess.CompletedProcess[str]]

SCRIPT = """
import torch
import crypten_lite as cl

party = cl.init()
assert party.replicated and type(party.dealer).__name__ == "NoDealer", party
g = torch.Generator().manual_seed(5)
a, b = torch.randn(4, 6, generator=g), torch.randn(6, 3, generator=g)
xa = cl.cryptensor(a if party.rank == 0 else None, src=0, shape=a.shape)
xb = cl.cryptensor(b if party.rank == 2 else None, src=2, shape=b.shape)
party.comm.stats.reset()
prod = (xa @ xb) * xa[:, :3]
got = prod.get_plain_text()
err = float((got - (a @ b) * a[:, :3]).abs().max())
assert err < 1e-3, err
print(f"rank {party.rank} ok err={err:.2e} rounds={party.comm.stats.total.rounds}")
cl.uninit()
"""


def _script(tmp_path: Path) -> str:
    path = tmp_path / "rep.py"
    path.write_text(SCRIPT)
    return str(path)


def test_launch_three_parties_replicated(cli: CliRunner, tmp_path: Path) -> None:
    result = cli(
        "launch", "-n", "3", "--protocol", "replicated", "--timeout", "20", _script(tmp_path)
    )
    assert result.returncode == 0, result.stderr + result.stdout
    for rank in range(3):
        assert f"rank {rank} ok" in result.stdout
    assert "dealer" not in result.stdout and "INSECURE" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-n", "3", "--dealer"], "no dealer process"),
        (["-n", "2"], "exactly 3 parties"),
        (["--rank", "dealer", "--world-size", "3", "--coordinator", "127.0.0.1:1"], "no dealer"),
    ],
)
def test_refusals(cli: CliRunner, tmp_path: Path, args: list[str], expected: str) -> None:
    script = [] if "dealer" in args[:2] else [_script(tmp_path)]
    env = {"CRYPTEN_LITE_SECRET": "x" * 64}
    result = cli("launch", *args, "--protocol", "replicated", *script, env=env, timeout=30)
    assert result.returncode == 2, result.stderr + result.stdout
    assert expected in result.stderr


def never_runs() -> None:
    raise AssertionError("the launch should have been refused before any process started")


def test_python_api_refuses_a_dealer_or_two_parties() -> None:
    import crypten_lite as cl
    from crypten_lite.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="no dealer process"):
        cl.launch(never_runs, 3, protocol="replicated", dealer=True)
    with pytest.raises(ConfigurationError, match="exactly 3 parties"):
        cl.launch(never_runs, 2, protocol="replicated")
