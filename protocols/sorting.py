"""Layer L3: sorting and prefix maxima of secret-shared vectors, data-oblivious.

A sorting *network* is a fixed, public list of compare-exchange steps ``(i, j)``, ``i < j``:
after the step position ``i`` holds ``min(x_i, x_j)`` and ``j`` the max. Which steps run never
depends on the data, so running one on secret shares reveals nothing (the classic route to
oblivious sorting in MPC). We use Batcher's odd-even merge sort: for ``m`` entries padded (in
thought) to ``M = 2**k`` it has ``k (k + 1) / 2`` *layers* of disjoint steps, so each layer runs
as one vectorised protocol call over every step of the layer and every row of the batch. Padding
entries are ``+inf``: a step touching a padding position never swaps, so those steps are simply
dropped and nothing is padded in practice.

One compare-exchange of ``a`` (at ``i``) and ``b`` (at ``j``): with ``d = a - b`` and
``r = relu(d) = d [a > b]`` (:func:`~crypten_lite.protocols.comparison.relu`, which returns the
product with the comparison bit in its own 4 rounds), ``min = a - r`` and ``max = b + r``; exact
(no truncation). A *payload* travelling with the values (the original positions, for ``argsort``
and the indices of ``topk``/``kthvalue``/``median``) is swapped with the mask ``c = [a > b]``:
``p_i' = p_i - c (p_i - p_j)``, ``p_j' = p_j + c (p_i - p_j)``, one Beaver product of 0/1 and
integer shares (no truncation). Ties do not swap, so equal values keep an order that depends on
the network, not on their positions (torch's ``stable=False`` contract).

Prefix maxima (``cummax``/``cummin``) use the Hillis-Steele scan with the same step at distances
``1, 2, 4, ...``: ``ceil(log2 m)`` layers of ``relu`` (+ the payload product).
"""

from __future__ import annotations

import functools

import torch

from crypten_lite.protocols.beaver import beaver
from crypten_lite.protocols.comparison import relu
from crypten_lite.runtime.party import Party

__all__ = ["cumulative_max", "network_layers", "sort"]

Tensor = torch.Tensor


@functools.cache
def network_layers(m: int) -> tuple[tuple[Tensor, Tensor], ...]:
    """Batcher's odd-even merge sort for ``m`` entries, as layers of disjoint steps.

    Returns:
        ``((first, second), ...)``: per layer, int64 index tensors with ``first < second``;
        ``ceil(log2 m) (ceil(log2 m) + 1) / 2`` layers (empty ones dropped).

    Reference: K. E. Batcher, "Sorting networks and their applications", AFIPS 1968; the
    iterative layer order as in Knuth, TAOCP vol. 3, 5.3.4.
    """
    size = 1
    while size < m:
        size *= 2
    layers = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            steps = []
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    lo, hi = i + j, i + j + k
                    # steps within one merge of two sorted runs of length p; beyond m: +inf
                    if lo // (2 * p) == hi // (2 * p) and hi < m:
                        steps.append((lo, hi))
            if steps:
                first = torch.tensor([s[0] for s in steps], dtype=torch.int64)
                second = torch.tensor([s[1] for s in steps], dtype=torch.int64)
                layers.append((first, second))
            k //= 2
        p *= 2
    return tuple(layers)


def _exchange(
    x: Tensor,
    payload: Tensor | None,
    first: Tensor,
    second: Tensor,
    party: Party,
    tag: str,
) -> tuple[Tensor, Tensor | None]:
    """One layer of compare-exchange steps on the last dimension (out of place)."""
    a, b = x[..., first], x[..., second]
    r, c = relu((a - b).contiguous(), party)
    out = x.clone()
    out[..., first] = a - r
    out[..., second] = b + r
    if payload is None:
        return out, None
    pa, pb = payload[..., first], payload[..., second]
    t = beaver("mul", c, (pa - pb).contiguous(), party, tag=f"{tag}.payload")
    moved = payload.clone()
    moved[..., first] = pa - t
    moved[..., second] = pb + t
    return out, moved


def sort(
    x: Tensor, party: Party, payload: Tensor | None = None, *, tag: str = "sort"
) -> tuple[Tensor, Tensor | None]:
    """Sort the last dimension of ``[x]`` ascending, moving ``[payload]`` with it.

    1. For each layer of :func:`network_layers` (``m`` = last dimension): gather the steps'
       ``[a]``, ``[b]``; ``[r], [c] = relu([a] - [b])`` (4 rounds); ``min = a - r``,
       ``max = b + r``.
    2. With a payload: ``[t] = [c] * ([p_a] - [p_b])`` (1 round) and swap likewise.

    Args:
        x: int64 shares ``(..., m)`` at any scale.
        payload: optional int64 shares of the same shape at scale 0 (e.g. positions).

    Returns:
        ``([sorted x], [payload in the same order])``.

    Cost: ``L = ceil(log2 m) (ceil(log2 m) + 1) / 2`` layers; ``4 L`` rounds (``5 L`` with a
    payload); per step and row each party sends ``13.1`` bytes (``+16`` with a payload) to each
    peer. ``m = 2**k`` has ``(k**2 - k + 4) 2**(k - 2) - 1`` steps (``m = 16``: 63 steps in 10
    layers; ``m = 1024``: 24063 steps in 55 layers).
    Security: semi-honest; the network is public and data-independent; each step is ReLU
    (see :func:`~crypten_lite.protocols.comparison.relu`) and a Beaver product, both of which
    open only uniformly masked values.
    Reference: Batcher, AFIPS 1968; oblivious sorting networks in MPC as in Jonsson, Kreitz and
    Uddin, "Secure multi-party sorting and applications", ePrint 2011/122.
    """
    for n, (first, second) in enumerate(network_layers(x.shape[-1])):
        x, payload = _exchange(x, payload, first, second, party, f"{tag}.{n}")
    return x, payload


def cumulative_max(
    x: Tensor,
    party: Party,
    payload: Tensor | None = None,
    *,
    minimum: bool = False,
    tag: str = "cummax",
) -> tuple[Tensor, Tensor | None]:
    """Prefix maxima (or minima) along the last dimension, with the payload of the winner.

    1. For ``k = 1, 2, 4, ... < m``: with ``a = y[i]`` (later) and ``b = y[i - k]`` for
       ``i >= k``: max: ``[r], [c] = relu(b - a)``, ``y[i] = a + r`` (``c = [b > a]``);
       min: ``[r], [c] = relu(a - b)``, ``y[i] = a - r`` (``c = [a > b]``). 4 rounds.
    2. With a payload: ``p[i] = p_a + c (p_b - p_a)`` (1 round). Ties keep ``a``, the later
       position, as torch's ``cummax``/``cummin`` do.

    Cost: ``ceil(log2 m)`` layers, 4 rounds each (5 with a payload); ``m - k`` steps in layer
    ``k``, each ``13.1`` bytes per row and peer (``+16`` with a payload).
    Security: as :func:`sort`.
    Reference: Hillis and Steele, "Data parallel algorithms", CACM 1986 (the scan).
    """
    m, k, n = x.shape[-1], 1, 0
    while k < m:
        a, b = x[..., k:], x[..., : m - k]
        diff = (a - b) if minimum else (b - a)
        r, c = relu(diff.contiguous(), party)
        x = torch.cat([x[..., :k], a - r if minimum else a + r], -1)
        if payload is not None:
            pa, pb = payload[..., k:], payload[..., : m - k]
            t = beaver("mul", c, (pb - pa).contiguous(), party, tag=f"{tag}.{n}.payload")
            payload = torch.cat([payload[..., :k], pa + t], -1)
        k, n = 2 * k, n + 1
    return x, payload
