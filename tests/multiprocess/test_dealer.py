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


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))


def prepare_and_save(directory: str) -> int:
    """Session 1: record and prepare a model's dealer material, save this party's share."""
    party = crypten_lite.get_party()
    with torch.no_grad():
        model = crypten_lite.encrypt_module(_mlp(), src=0, reuse_weight_masks=False)
        plan = crypten_lite.plan(model, crypten_lite.cryptensor(torch.zeros(3, 10), src=1))
        plan.prepare()
        plan.save(f"{directory}/plan{party.rank}.safetensors")
    return plan.issued


def load_and_run(directory: str, x: torch.Tensor) -> dict[str, object]:
    """Session 2 (new processes, new seeds): the saved material serves the online run."""
    party = crypten_lite.get_party()
    with torch.no_grad():
        model = crypten_lite.encrypt_module(_mlp(), src=0, reuse_weight_masks=False)
        xe = crypten_lite.cryptensor(x, src=1)
        plan = crypten_lite.load_plan(f"{directory}/plan{party.rank}.safetensors")
        party.comm.stats.reset()
        with plan.online():
            y = model(xe)
        stats = party.comm.stats.snapshot()
        dealer = sum(
            s.messages_sent + s.messages_received
            for tag, s in stats.by_tag.items()
            if tag.startswith("dealer.")
        )
        return {
            "y": y.get_plain_text(),
            "rounds": stats.total.rounds,
            "dealer_messages": dealer,
            "used": (plan.consumed, plan.issued),
        }


def test_material_prepared_in_one_run_serves_another(tmp_path: object) -> None:
    cfg = Config(timeout_s=20.0)
    issued = launch(prepare_and_save, 2, args=(str(tmp_path),), dealer=True, config=cfg)
    x = torch.randn(3, 10) * 5
    res = launch(load_and_run, 2, args=(str(tmp_path), x), dealer=True, config=cfg)
    assert issued[0] == issued[1] > 0
    for r in res:
        assert (r["y"] - _mlp()(x)).abs().max().item() < 1e-3  # type: ignore[operator]
        assert r["dealer_messages"] == 0 and r["used"] == (issued[0], issued[0])
    assert res[0]["rounds"] == res[1]["rounds"]
    assert not list(tmp_path.iterdir())  # type: ignore[attr-defined]  # loading consumed the files
