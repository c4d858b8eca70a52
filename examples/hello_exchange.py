"""Hello, MPC: two (or more) parties add their private tensors without showing them.

Run with ``make demo``, i.e.::

    crypten-lite launch -n 2 --dealer examples/hello_exchange.py

Every party secret-shares a small private tensor, the parties add the sharings locally (no
messages), and open only the sum. Then they exchange a few plain tensors and each prints its
communication statistics.
"""

from __future__ import annotations

import torch

import crypten_lite
from crypten_lite.protocols.sharing import reveal, share


def main() -> None:
    party = crypten_lite.init()
    rank, n = party.rank, party.world_size

    # Each party's private input: only this process ever sees it in the clear.
    mine = torch.tensor([1.5, -2.0, 0.25]) * (rank + 1)
    print(f"my private input: {mine.tolist()}")

    # Party i's value becomes shares [x_i]; adding shares adds the values (locally, no messages).
    total_share = sum(
        share(mine if r == rank else None, r, party, shape=mine.shape) for r in range(n)
    )
    total = reveal(total_share, party)
    expected = torch.tensor([1.5, -2.0, 0.25]) * sum(range(1, n + 1))
    assert total is not None
    print(f"sum of everybody's inputs: {total.tolist()} (expected {expected.tolist()})")

    # Plain (public) communication: every party sends a tensor to every other party.
    received = party.comm.exchange(torch.full((4,), rank, dtype=torch.int32), "hello.exchange")
    print(f"received from peers: { {peer: t.tolist() for peer, t in received.items()} }")

    # A Beaver triple from the dealer (or from party 0 without --dealer), just to show it works.
    a, b, c = party.dealer.triple("mul", (3,), (3,))
    print(f"my share of a Beaver triple: c has shape {tuple(c.shape)}")

    print("communication statistics:\n" + party.comm.stats.table())
    crypten_lite.uninit()


if __name__ == "__main__":
    main()
