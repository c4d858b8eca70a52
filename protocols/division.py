"""Layer L3: exact floor division of a sharing by a public power of two.

Truncation (``protocols.truncation``) divides by ``2**b`` but may round either way (and is
meant for fixed-point products, where one ulp does not matter). Floor division and remainder
(``x // 2``, ``x % 2``) must be exact: the quotient is an integer and an off-by-one is a wrong
answer. Truncation gets within one of the floor; one comparison of the remainder corrects it.
"""

from __future__ import annotations

import torch

from crypten_lite.protocols.comparison import ltz
from crypten_lite.protocols.truncation import truncate
from crypten_lite.runtime.party import Party

__all__ = ["floor_div_pow2"]

Tensor = torch.Tensor


def floor_div_pow2(x: Tensor, party: Party, bits: int) -> Tensor:
    """``[floor(x / 2**bits)]`` exactly, for ring integers ``x`` read as signed.

    1. ``[q0] = truncate([x], bits)``: ``q0`` is ``floor(x / D)`` or a neighbour (``D = 2**bits``).
    2. ``[r] = [x] - D [q0]`` (local), so ``r`` lies in ``[-D, 2D)``.
    3. One comparison of ``2 n`` values: ``[c1] = [r < 0]`` and ``[c2] = [r - D < 0]``.
    4. Return ``[q0] - [c1] + 1 - [c2]``: ``q0 - 1`` when ``r < 0``, ``q0 + 1`` when
       ``r >= D``, ``q0`` otherwise.

    Args:
        x: int64 shares, any shape.
        bits: ``0 <= bits <= 62``.

    Cost: a truncation (0 rounds with 2 parties' local truncation, 1 with the dealer's) and one
    comparison: 4 rounds, ``2 * 13.1`` bytes per element to each peer.
    Error: none, whenever the truncation of step 1 is within one of the floor (two parties'
    local truncation fails with probability about ``|x| / 2**63``, as for every product).
    Security: semi-honest; as :func:`~crypten_lite.protocols.truncation.truncate` and
    :func:`~crypten_lite.protocols.comparison.ltz` (every opened value is masked).
    Reference: the truncate-then-correct pattern of exact truncation, Catrina and Saxena, FC'10.
    """
    if not 0 <= bits <= 62:
        raise ValueError(f"party {party.rank}: floor_div_pow2 by 2**{bits} (0 <= bits <= 62)")
    if bits == 0:
        return x.clone()
    d = 1 << bits
    q0 = truncate(x, party, bits)
    r = x - (q0 << bits)
    shifted = r - d if party.rank == 0 else r
    below = ltz(torch.stack([r, shifted]), party)
    out = q0 - below[0] - below[1]
    if party.rank == 0:
        out += 1
    return out
