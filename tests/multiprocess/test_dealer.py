"""The dealer process path: correlated randomness served by a separate process."""

from __future__ import annotations

import pytest
import torch

import crypten_lite
from crypten_lite.config import Config
from crypten_lite.launcher.api import launch
from crypten_lite.protocols.opening import open_shares

pytestmark = pytest.mark.multiprocess


def beaver_triple() -> dict[str, object]:
    party = crypten_lite.get_party()
    a, b, c = party.dealer.triple("mul", (3,), (3,))
    opened = open_shares([a, b, c], party)
    assert opened is not None
    return {"dealer": type(party.dealer).__name__, "abc": opened}


def test_a_beaver_triple_from_the_dealer_process_is_correct() -> None:
    results = launch(beaver_triple, 2, dealer=True, config=Config(timeout_s=20.0), timeout_s=90.0)
    assert [r["dealer"] for r in results] == ["TrustedThirdParty"] * 2
    a_pub, b_pub, c_pub = results[0]["abc"]
    assert all(torch.equal(x, y) for x, y in zip(results[0]["abc"], results[1]["abc"], strict=True))
    assert torch.equal(a_pub * b_pub, c_pub)  # int64 products wrap mod 2**64, as the ring does
    assert not torch.equal(a_pub, torch.zeros(3, dtype=torch.int64))
