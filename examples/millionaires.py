"""Yao's millionaires' problem: who is richer? Everyone learns the answer and nothing else.

Each party has a private fortune (drawn at random here; only its own process ever sees it). The
heart of the example is five lines::

    party = crypten_lite.init()
    fortunes = [crypten_lite.cryptensor(mine if r == party.rank else None, src=r)
                for r in range(party.world_size)]            # every fortune, secret-shared
    richest = torch.stack(fortunes).argmax()                 # computed on shares only
    print("the richest is party", int(richest.get_plain_text()))  # the one value opened

``argmax`` runs a secure comparison protocol on the shares; its output, the index of the
richest party, is itself secret until ``get_plain_text()`` opens it to everyone. Nobody learns
how much richer, or anyone's fortune. (On a tie, the lower rank counts as richer.)

Run it::

    crypten-lite launch -n 2 --dealer examples/millionaires.py   # any -n works

Every party prints its own fortune (its own secret, on its own screen), the answer, and a
``RESULT {json}`` line with both, so a test can check the answer against the fortunes.
"""

from __future__ import annotations

import random

import torch
from _common import human_bytes, measure, parse_args, print_result

import crypten_lite


def main() -> None:
    parse_args(__doc__)  # only --quick, which changes nothing: this example is instant
    party = crypten_lite.init()
    mine = round(random.SystemRandom().uniform(1.0, 100.0), 2)  # millions; private to this party
    print(f"my fortune: {mine:.2f} million (only I know this)")

    with measure(party) as cost:
        fortunes = [
            crypten_lite.cryptensor(mine if r == party.rank else None, src=r)
            for r in range(party.world_size)
        ]
        richest = torch.stack(fortunes).argmax()
        answer = int(richest.get_plain_text())

    who = "I am" if answer == party.rank else f"party {answer} is"
    print(f"{who} the richest of {party.world_size} — and that is all anyone learned")
    print(f"cost: {cost.rounds} rounds, {human_bytes(cost.bytes_sent)} sent")
    print_result(rank=party.rank, my_fortune=mine, richest=answer, rounds=cost.rounds)
    crypten_lite.uninit()


if __name__ == "__main__":
    main()
