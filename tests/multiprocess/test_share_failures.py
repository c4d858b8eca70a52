"""Invalid input to ``cryptensor`` over real processes (issue 11): every party raises at once.

Before the fix, ``cryptensor(None)`` raised on the source only and the other parties waited for
the message timeout (60 s here): the test's time bound is what catches a regression.
"""

from __future__ import annotations

import time

import pytest
import torch

import crypten_lite
from crypten_lite.config import Config
from crypten_lite.errors import EncodingError
from crypten_lite.launcher.api import launch

pytestmark = [
    pytest.mark.multiprocess,
    pytest.mark.filterwarnings("ignore:launch\\(dealer=False\\):RuntimeWarning"),
]


def share_invalid_inputs() -> list[str]:
    """Rank 0 passes invalid inputs; every party reports its error, then all go on in step."""
    party = crypten_lite.get_party()
    seen = []
    for bad in (None, "abc", [[1.0], [2.0, 3.0]], [float("inf")]):
        try:
            crypten_lite.cryptensor(bad if party.rank == 0 else None)
        except EncodingError as exc:
            seen.append(f"EncodingError: {exc}")
        except (TypeError, ValueError) as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
        else:
            seen.append("no error")
    plain = crypten_lite.cryptensor(torch.tensor([2.5])).get_plain_text()
    seen.append(f"after: {plain.tolist()}")
    return seen


@pytest.mark.parametrize("world_size", [3])  # 2 parties: tests/mpc/test_surface_bugs.py
def test_invalid_cryptensor_input_fails_every_process_at_once(world_size: int) -> None:
    start = time.monotonic()
    results = launch(
        share_invalid_inputs,
        world_size,
        dealer=False,
        config=Config(timeout_s=60.0),
        timeout_s=90.0,
        quiet=True,
    )
    elapsed = time.monotonic() - start
    assert elapsed < 40.0, f"a party waited for a timeout ({elapsed:.1f} s)"
    source, *others = results
    assert [s.split(":")[0] for s in source[:4]] == [
        "ValueError",
        "TypeError",
        "TypeError",
        "EncodingError",
    ]
    for seen in others:
        assert all("party 0 could not encode its input" in s for s in seen[:4])
    for seen in results:
        assert seen[4] == "after: [2.5]"
