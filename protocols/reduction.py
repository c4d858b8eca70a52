"""Layer L3: maximum, minimum, argmax and argmin over a dimension.

A *group* of ``m <= 10`` candidates is reduced in one comparison depth (5 rounds):

1. All ``m (m - 1) / 2`` pairwise differences go through one :func:`~crypten_lite.protocols.
   comparison.sign_bits` call (3 rounds), giving XOR bits ``s_ij = [x_i < x_j]`` for ``i < j``.
   Candidate ``i`` beats ``j`` when ``w_ij = 1 ^ s_ij`` (``i < j``: ties go to the lower index,
   as in ``torch.argmax``) or ``w_ij = s_ji`` (``i > j``); the payloads to select (the values,
   and at higher levels the one-hots of the subtrees) are opened masked in the same first round.
2. The winner is the one candidate that beats all others: a ``(m - 1)``-input AND per
   candidate, one round (:func:`~crypten_lite.protocols.binary.and_k`).
3. One round of bit injection turns the one-hot into arithmetic shares and multiplies each
   candidate's bit by its own payload; summing over the candidates selects the winner's.

Longer dimensions are split into groups and reduced level by level (a tree of fan-in up to 10,
with a first level of pairs where that saves a round, see :func:`_plan`); each level carries the one-hot of its subtree as payload, so the final one-hot over the
original positions costs no extra round. ``m = 2`` needs no AND: 4 rounds, as ReLU.

Results: values at the input's scale (exact: selection, no truncation); one-hots as
arithmetic shares of ring integers 0/1 (scale 0).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from crypten_lite.protocols.binary import and_k, and_request
from crypten_lite.protocols.comparison import cmp_request, sign_bits
from crypten_lite.protocols.conversion import inject_masked, open_masked_bits
from crypten_lite.runtime.dealer import DealerRequest, padded
from crypten_lite.runtime.party import Party

__all__ = ["GROUP_MAX", "argmax", "argmin", "max_dim", "min_dim"]

Tensor = torch.Tensor
GROUP_MAX = 10
_PAD = -(1 << 62)  # below every value a comparison handles exactly


@functools.cache
def _pairs(m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pair indices ``i < j`` and, per candidate, its ``m - 1`` pair columns and flip bits."""
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    index = {p: t for t, p in enumerate(pairs)}
    cols, flips = [], []
    for i in range(m):
        cols.append([index[(min(i, j), max(i, j))] for j in range(m) if j != i])
        flips.append([1 if i < j else 0 for j in range(m) if j != i])
    first = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
    second = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    return first, second, torch.tensor(cols), torch.tensor(flips)


def _group_max(x: Tensor, payload: Tensor, party: Party, tag: str) -> tuple[Tensor, Tensor, Tensor]:
    """Reduce ``(R, m)`` candidates; ``payload`` ``(R, m, q)`` is selected with the winner.

    Returns:
        ``(onehot (R, m), selected (R, q), per_candidate (R, m, q))``, all arithmetic;
        ``per_candidate[r, i] = onehot[r, i] * payload[r, i]``.
    """
    rows, m = x.shape
    q = payload.shape[-1]
    first, second, cols, flips = _pairs(m)
    n = padded(max(rows, 1))
    requests = [
        DealerRequest("inject", {"n": n, "bits": m, "values": m * q, "mode": "block"}),
        cmp_request(padded(rows * first.numel()), 1),
    ]
    if m > 2:
        requests.append(and_request(rows * m, m - 1))
    batch = party.dealer.request(requests)  # one dealer round trip for the whole group step
    rho, alpha = batch.free(0)
    values = F.pad(payload.permute(1, 2, 0).reshape(m * q, rows), (0, n - rows))
    diffs = x[:, first] - x[:, second]
    sb = sign_bits(diffs, party, [0], extra=[values - alpha], tag=tag, batch=batch, index=1)
    s = sb.bits[0, : sb.n].view(rows, -1)
    beats = s[:, cols]
    if party.rank == 0:
        beats = beats ^ flips
    material = batch.item(2) if m > 2 else None
    winner = and_k(beats, party, tag=f"{tag}.and", material=material)  # (R, m) XOR bits
    rho_a, prod = batch.item(0)[2:]
    d_pub = open_masked_bits(F.pad(winner.t(), (0, n - rows)), rho, party, tag=f"{tag}.b2a")
    onehot = inject_masked(d_pub, rho_a, party)  # (m, n)
    e_pub = sb.extra_pub[0].view(m, q, n)
    v_rho = e_pub * rho_a.unsqueeze(1) + prod  # [payload * rho]
    d3 = d_pub.unsqueeze(1)
    per = d3 * values.view(m, q, n) + (1 - 2 * d3) * v_rho  # (m, q, n)
    per = per[:, :, :rows].permute(2, 0, 1)
    return onehot[:, :rows].t(), per.sum(1), per


def _pad_candidates(x: Tensor, size: int, party: Party) -> Tensor:
    extra = size - x.shape[-1]
    if extra == 0:
        return x
    return F.pad(x, (0, extra), value=_PAD if party.rank == 0 else 0)


def _balanced(m: int) -> list[int]:
    """Fewest levels of fan-in at most GROUP_MAX, group sizes balanced, first level first."""
    levels = 1
    while math.ceil(m ** (1 / levels)) > GROUP_MAX:
        levels += 1
    sizes, left = [], m
    for lvl in range(levels):
        g = math.ceil(left ** (1 / (levels - lvl)))
        sizes.append(g)
        left = math.ceil(left / g)
    return sizes


def _rounds(sizes: list[int]) -> int:
    return sum(4 if g == 2 else 5 for g in sizes)


def _plan(m: int) -> list[int]:
    """Group sizes of the levels, first level first: the fewest rounds.

    A level of pairs costs 4 rounds (no AND), any wider level 5, so a first level of pairs
    can save a round: 128 = (2, 8, 8) takes 14 rounds where (6, 5, 5) takes 15, and 11 to 20
    take (2, 10) in 9 where (4, 4) take 10. Ties keep the balanced plan (fewer bytes)."""
    plan = _balanced(m)
    if m > 2:
        paired = [2, *_balanced(math.ceil(m / 2))]
        if _rounds(paired) < _rounds(plan):
            return paired
    return plan


def _max_last(x: Tensor, party: Party, want_onehot: bool, tag: str) -> tuple[Tensor, Tensor | None]:
    """Max over the last dimension of ``(R, m)``: values ``(R,)`` and one-hot ``(R, m)``."""
    rows, m = x.shape
    if m == 1:
        one = torch.ones_like(x) if party.rank == 0 else torch.zeros_like(x)
        return x[:, 0].clone(), one
    cur = x
    onehot: Tensor | None = None  # one-hot of each current candidate over its subtree
    sub = 1  # subtree width of the current candidates
    for g in _plan(m):
        count = cur.shape[1]
        groups = math.ceil(count / g)
        cur = _pad_candidates(cur, groups * g, party).reshape(rows * groups, g)
        parts = [cur.unsqueeze(-1)]
        if want_onehot and onehot is not None:
            oh = F.pad(onehot, (0, (groups * g - count) * sub))
            parts.append(oh.reshape(rows * groups, g, sub))
        group_onehot, selected, per = _group_max(cur, torch.cat(parts, -1), party, tag)
        if want_onehot:
            full = group_onehot if onehot is None else per[..., 1:]
            sub *= g
            onehot = full.reshape(rows, groups * sub)
        cur = selected[:, 0].reshape(rows, groups)
    value = cur[:, 0]
    return value, (onehot[:, :m] if want_onehot and onehot is not None else None)


def max_dim(
    x: Tensor, party: Party, dim: int = -1, keepdim: bool = False, *, onehot: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``[max(x, dim)]`` and optionally the one-hot ``[argmax]`` (arithmetic 0/1, scale 0).

    1. Split the dimension into groups of at most 10 (a tree of ``ceil(log_10 m)`` levels for
       long dimensions, or a first level of pairs and fewer wide levels where that takes
       fewer rounds: 128 takes (2, 8, 8); padding loses every comparison).
    2. Per level, one comparison depth (module docstring): pairwise comparisons, a multi-input
       AND, and one injection round that selects values (and subtree one-hots).

    Ties go to the lowest index, as in ``torch.max`` / ``torch.argmax``. Exact: the values are
    selected, not computed, for any ``|x| < 2**62`` (ring units).

    Args:
        x: int64 shares.
        onehot: also return the one-hot of the argmax, same shape as ``x``.

    Returns:
        ``(values, onehot or None)``; ``values`` lose ``dim`` unless ``keepdim``.

    Cost per level (``m`` candidates per group, ``R`` groups): 5 rounds (4 when ``m = 2``);
    each party sends ``R (m (m - 1) / 2 * 13 + m (8 q + 1 + 1/8))`` bytes to each peer, ``q``
    the payload size (1 for values; ``1 +`` subtree width with ``onehot``).
    Security: semi-honest; only uniformly masked values are opened.
    Reference: all-pairs maximum in constant rounds as in Damgard et al., TCC'06 (here with
    dealer-assisted multi-input ANDs); tournament trees for long dimensions.
    """
    d = dim % x.dim() if x.dim() else 0
    moved = x.movedim(d, -1)
    lead = moved.shape[:-1]
    m = moved.shape[-1]
    values, oh = _max_last(moved.reshape(-1, m), party, onehot, "max")
    out = values.reshape(lead)
    if keepdim:
        out = out.unsqueeze(d)
    if oh is not None:
        oh = oh.reshape(*lead, m).movedim(-1, d)
    return out, oh


def min_dim(
    x: Tensor, party: Party, dim: int = -1, keepdim: bool = False, *, onehot: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``[min(x, dim)]`` (and one-hot): :func:`max_dim` of ``-x``, negated. Same cost.

    Security and reference: as :func:`max_dim`.
    """
    values, oh = max_dim(-x, party, dim, keepdim, onehot=onehot)
    return -values, oh


def argmax(x: Tensor, party: Party, dim: int = -1) -> Tensor:
    """One-hot ``[argmax(x, dim)]`` (arithmetic 0/1 ring integers, same shape as ``x``); ties go
    to the lowest index. Cost as :func:`max_dim` with ``onehot=True``.

    Security and reference: as :func:`max_dim`.
    """
    _, oh = max_dim(x, party, dim, onehot=True)
    assert oh is not None
    return oh


def argmin(x: Tensor, party: Party, dim: int = -1) -> Tensor:
    """One-hot ``[argmin(x, dim)]``: :func:`argmax` of ``-x`` (ties to the lowest index).

    Cost, security and reference: as :func:`max_dim`.
    """
    return argmax(-x, party, dim)
