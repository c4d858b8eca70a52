"""Online / offline split of the communication counters (``CommStats.dealer``) and of
``crypten_lite.profile``: traffic with the dealer process is counted apart from the parties'."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import crypten_lite as cl
from crypten_lite.runtime.comm import CommStats
from crypten_lite.runtime.party import Party


def test_commstats_parties_is_total_less_dealer() -> None:
    s = CommStats()
    s._on_send("beaver", 80, 40)
    s._on_recv("beaver", 80, 0.5)
    s._on_round("beaver")
    s._on_send("dealer.request", 10, 40, dealer=True)
    s._on_round("dealer.request", dealer=True)
    s._on_recv("dealer.reply", 800, 2.0, dealer=True)
    s._on_round("dealer.reply", dealer=True)
    assert (s.total.rounds, s.dealer.rounds, s.parties.rounds) == (3, 2, 1)
    assert (s.parties.bytes_sent, s.parties.bytes_received) == (80, 80)
    assert (s.dealer.bytes_sent, s.dealer.bytes_received, s.dealer.wait_s) == (10, 800, 2.0)
    assert s.parties.wait_s == 0.5
    copy = s.snapshot()
    s.reset()
    assert copy.dealer.bytes_received == 800 and s.dealer.bytes_received == 0


@pytest.mark.parametrize("dealer", ["ttp", "tfp"])
def test_profile_splits_dealer_traffic(run_parties: Any, world_size: int, dealer: str) -> None:
    a, b = torch.randn(4, 5), torch.randn(5, 3)

    def body(party: Party) -> Any:
        with cl.use_party(party):
            ae, be = cl.cryptensor(a), cl.cryptensor(b)
            with cl.profile() as prof:
                (ae @ be).relu().sum().get_plain_text()
            s = party.comm.stats
            return prof, s.total.rounds, s.dealer.rounds, s.parties.rounds

    out = run_parties(body, world_size, dealer=dealer)
    for rank, (prof, total, dealer_rounds, party_rounds) in enumerate(out):
        assert total == dealer_rounds + party_rounds
        mm, tot = prof.rows["aten.mm"], prof.total
        # online columns: the same for every party, the dealer's round trips not among them
        assert mm.rounds == out[0][0].rows["aten.mm"].rounds
        assert tot.rounds == out[0][0].total.rounds
        assert 0.0 <= tot.online_s <= tot.seconds
        if dealer == "ttp" and rank == 0:
            # party 0 fetches the triple and truncation material: at least a request and
            # its reply, the reply carrying at least the product's 4x3 correction
            assert mm.dealer_messages >= 2 and mm.dealer_bytes_received >= 8 * 4 * 3
            assert "dealer msgs" in prof.table()
        else:  # other parties draw locally; a first party deals without messages
            assert tot.dealer_messages == tot.dealer_bytes_sent == tot.dealer_bytes_received == 0
            assert "dealer msgs" not in prof.table()
