"""Three parties: the private digits inference of ``private_inference.py`` with N = 3.

crypten_lite is not a two-party library: any number of parties can share a secret, and the
computation stays private unless *all* of them collude. Here:

* party 0, the model owner, secret-shares its trained CNN;
* party 1, the data owner, secret-shares its images and alone learns the predicted labels;
* party 2 is a helper: it holds a third share of everything, takes part in every protocol
  step, and learns nothing (it prints what it got: ``None``).

Adding the helper means that the model owner and the data owner could not recover each other's
inputs even by pooling their views: every value is split three ways. The cost is more traffic
(every party talks to every other party, and truncation uses the dealer-assisted protocol for
more than two parties), but not more rounds per op: each protocol round sends all messages at
once.

Run it::

    crypten-lite launch -n 3 --dealer examples/three_parties.py [--quick]

The data owner prints the same report and ``RESULT {json}`` line as ``private_inference.py``.
"""

from __future__ import annotations

from private_inference import main

if __name__ == "__main__":
    main(world_size=3, description=__doc__)
