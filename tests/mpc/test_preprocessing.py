"""The offline phase (plan, prepare, online) and dealer prefetch, against plaintext torch.

Tolerance: a small MLP with fixed-point f = 16 (see tests/mpc/test_nn.py): each product adds a
truncation error of a few 2**-16, so 1e-3 absolute bounds every output here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import crypten_lite as cl
from crypten_lite.runtime.party import Party

Run = Callable[..., list[Any]]
TOL = 1e-3


def make_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Softmax(-1)
    )


NET = make_net()
# The whole input range the model is used on, not only values near 1.
X = [torch.randn(4, 12) * s for s in (0.5, 4.0, 30.0)]


def dealer_messages(party: Party) -> int:
    stats = party.comm.stats
    return sum(
        s.messages_sent + s.messages_received
        for tag, s in stats.by_tag.items()
        if tag.startswith("dealer.")
    )


@pytest.mark.parametrize("dealer", ["tfp", "ttp"])
def test_planned_run_is_correct_with_no_dealer_message(
    world_size: int, dealer: str, run_parties: Run
) -> None:
    def body(party: Party) -> dict[str, Any]:
        with cl.use_party(party), torch.no_grad():
            model = cl.encrypt_module(copy.deepcopy(NET), src=0)
            plan = cl.plan(model, cl.cryptensor(X[0], src=1))
            plan.prepare()
            outs, rounds, messages = [], [], []
            for x in X[1:]:
                xe = cl.cryptensor(x, src=party.world_size - 1)
                party.comm.stats.reset()
                with plan.online():
                    y = model(xe)
                rounds.append(party.comm.stats.total.rounds)
                messages.append(dealer_messages(party))
                outs.append(y.get_plain_text())
                assert (plan.issued, plan.consumed) == (len(plan.requests), len(plan.requests))
                plan.prepare()  # each online run needs its own material
            return {"outs": outs, "rounds": rounds, "messages": messages, "n": plan.issued}

    res = run_parties(body, world_size, dealer=dealer)
    for r in res:
        assert r["messages"] == [0, 0] and r["n"] > 0
        assert r["rounds"] == res[1]["rounds"]  # party 0 pays the same rounds as the others
        for x, y in zip(X[1:], r["outs"], strict=True):
            assert (y - NET(x)).abs().max().item() < TOL


def test_a_divergent_program_is_refused_on_every_party(world_size: int, run_parties: Run) -> None:
    def body(party: Party) -> list[str]:
        seen = []
        with cl.use_party(party), torch.no_grad():
            model = cl.encrypt_module(copy.deepcopy(NET), src=0)
            plan = cl.plan(model, cl.cryptensor(X[0], src=1))
            plan.prepare()
            other = cl.cryptensor(torch.randn(5, 12), src=1)  # another batch size
            with pytest.raises(cl.PlanMismatchError, match="diverged from its plan at dealer"):
                with plan.online():
                    model(other)
            seen.append("shape")
            with pytest.raises(cl.PlanMismatchError, match="not prepared"):
                with plan.online():
                    pass  # the store was dropped, never served again
            seen.append("again")
            plan.prepare()
            with pytest.raises(cl.PlanMismatchError, match="used 2 of the plan"):
                with plan.online():
                    model[0](other[:4])  # only the first layer: material left over
            seen.append("short")
            # The session goes on with ordinary dealing.
            y = model(cl.cryptensor(X[1], src=1)).get_plain_text()
            assert (y - NET(X[1])).abs().max().item() < TOL
        return seen

    assert run_parties(body, world_size, dealer="ttp") == [["shape", "again", "short"]] * world_size


def test_no_prepared_item_is_used_twice(run_parties: Run) -> None:
    """Every issued item is consumed exactly once and all masks differ (uniform 64-bit values
    never repeat by chance)."""

    def body(party: Party) -> tuple[int, int, int, int]:
        with cl.use_party(party), torch.no_grad():
            model = cl.encrypt_module(copy.deepcopy(NET), src=0)
            xe = cl.cryptensor(X[0], src=1)
            plan = cl.plan(model, xe)
            plan.prepare()
            assert plan._items is not None
            firsts = {int(item[0].reshape(-1)[0]) for item in plan._items if item[0].numel()}
            with plan.online():
                model(xe)
            return (
                plan.issued,
                plan.consumed,
                len(firsts),
                sum(1 for item in plan.requests if item.kind),
            )

    for issued, consumed, distinct, n in run_parties(body, 2, dealer="ttp"):
        assert issued == consumed == n and distinct >= n - 1


def test_a_saved_plan_serves_one_later_run(tmp_path: Path, run_parties: Run) -> None:
    def body(party: Party) -> tuple[float, bool, bool]:
        path = tmp_path / f"plan{party.rank}.safetensors"
        with cl.use_party(party), torch.no_grad():
            # a plan for a later session cannot refer to this session's weight masks
            model = cl.encrypt_module(copy.deepcopy(NET), src=0, reuse_weight_masks=False)
            plan = cl.plan(model, cl.cryptensor(X[0], src=1))
            plan.prepare()
            plan.save(path)
            assert not plan.prepared and (path.stat().st_mode & 0o777) == 0o600
            loaded = cl.load_plan(path)
            gone = not path.exists()  # loading takes the material out of the file
            xe = cl.cryptensor(X[2], src=1)
            with loaded.online():
                y = model(xe)
            err = (y.get_plain_text() - NET(X[2])).abs().max().item()
            return err, gone, loaded.consumed == loaded.issued

    for err, gone, all_used in run_parties(body, 2, dealer="ttp"):
        assert err < TOL and gone and all_used


@pytest.mark.parametrize("reuse", [False, True])
def test_prefetch_gives_party0_the_rounds_of_the_others(
    world_size: int, reuse: bool, run_parties: Run
) -> None:
    """Without any offline phase: from the second forward pass on, party 0's dealer requests
    were predicted and sent ahead, so it counts no dealer round."""

    def body(party: Party) -> dict[str, Any]:
        with cl.use_party(party), torch.no_grad():
            model = cl.encrypt_module(copy.deepcopy(NET), src=0)
            cl.nn.reuse_weight_masks(model, reuse)
            rounds, outs = [], []
            for x in X:
                xe = cl.cryptensor(x, src=1)
                party.comm.stats.reset()
                y = model(xe)
                rounds.append(party.comm.stats.total.rounds)
                outs.append(y.get_plain_text())
            return {"rounds": rounds, "outs": outs, "hits": getattr(party.dealer, "predicted", 0)}

    res = run_parties(body, world_size, dealer="ttp")
    assert res[0]["hits"] > 0
    for r in res:
        assert r["rounds"][1:] == res[1]["rounds"][1:]
        for x, y in zip(X, r["outs"], strict=True):
            assert (y - NET(x)).abs().max().item() < TOL


def test_a_plan_with_reused_weight_masks(tmp_path: Path, run_parties: Run) -> None:
    """Masks made by a warm-up pass are referred to by the plan, not made again; such a plan
    lives in the session (the dealer keeps the masks), so it cannot be saved."""

    def body(party: Party) -> tuple[list[str], float]:
        with cl.use_party(party), torch.no_grad():
            model = cl.nn.reuse_weight_masks(cl.encrypt_module(copy.deepcopy(NET), src=0))
            xe = cl.cryptensor(X[0], src=1)
            model(xe)  # makes the weight masks
            plan = cl.plan(model, xe)
            plan.prepare()
            with pytest.raises(cl.ConfigurationError, match="fixed masks"):
                plan.save(tmp_path / f"p{party.rank}")
            with plan.online():
                y = model(cl.cryptensor(X[1], src=1))
            return [r.kind for r in plan.requests], (
                y.get_plain_text() - NET(X[1])
            ).abs().max().item()

    for kinds, err in run_parties(body, 2, dealer="ttp"):
        assert "fixed_triple" in kinds and "fixed_mask" not in kinds and err < TOL
