"""``crypten_lite.launch`` / ``@crypten_lite.run_multiprocess`` from a script run as ``__main__``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.multiprocess

SCRIPT = """
import torch
import crypten_lite

@crypten_lite.run_multiprocess(world_size=2, dealer=False, quiet=True)
def total(scale):
    party = crypten_lite.get_party()
    mine = torch.tensor([float(party.rank + 1)]) * scale
    return party.comm.all_reduce(mine, "total").item(), party.rank

if __name__ == "__main__":
    print("results:", total(10.0))
"""


def test_decorated_function_of_a_main_script_runs_on_every_party(tmp_path: Path) -> None:
    script = tmp_path / "decorated.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYPTEN_LITE_")}
    result = subprocess.run(
        [sys.executable, "-W", "ignore::RuntimeWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "results: [(30.0, 0), (30.0, 1)]" in result.stdout
