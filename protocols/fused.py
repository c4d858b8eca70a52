"""Layer L3: exact truncation fused into the next product — pending values.

A fixed-point product ``z`` must be truncated by ``k`` bits before it is used. The exact dealer
truncation (:func:`~crypten_lite.protocols.truncation.truncate_dealer`) opens
``c = z + 2**62 + r`` and costs a round of its own. When the truncated value only feeds another
product, that opening can travel in the product's own round instead of the Beaver opening
``x - a``: a :class:`Pending` keeps ``z`` and ``k``, :func:`mul_fused` opens ``c`` for every
pending operand next to ``x - a`` of the plain ones, and forms the product directly. The
result is the same value (bit for bit) as ``truncate_dealer`` followed by a Beaver product,
with one round fewer. :func:`settle` is the standalone truncation, for a pending value used
by anything else (a comparison, an output).

Why it works. After the opening, the truncation of ``truncate_dealer`` (steps 3-4) reads
``X = P - A`` with the public ``P = (c >> k) - 2**(62-k)`` (logical shift) and
``A = [r_hi] - W [s]``, ``r_hi = r >> k``, ``s = msb(r)``, ``W = 2**(64-k) (1 - msb(c))``
public: ``A`` is linear in dealer shares with public coefficients, exactly like a Beaver mask.
So with ``X = P_X + L_X`` (``L_X = -[r_hi] + W [s]``; a plain operand has ``P = x - a``,
``L = [a]``):

    ``X Y = P_X P_Y + P_X [L_Y] + P_Y [L_X] + [L_X L_Y]``

and ``[L_X L_Y]`` is a public combination of products of dealer values (the ``fused`` dealer
kind, :mod:`crypten_lite.runtime.dealer.arith_kinds`): ``[r_hi b]``, ``[s b]`` for a plain ``Y``;
``[r_hi r'_hi]``, ``[r_hi s']``, ``[s r'_hi]`` (``[s s']`` only if ``k + k' > 64``: its
coefficient ``W W'`` is a multiple of ``2**(128-k-k')``) for two pending ones; for a square
``L**2 = r_hi**2 - 2 W r_hi s + W**2 s`` (``s**2 = s``).

Pending values are linear: ``Pending(z, k) + Pending(z', k)`` is ``Pending(z + z', k)`` (the
truncation of a sum is the sum of truncations within one ulp per term), a plain value ``x`` at
the output scale adds as ``x * 2**k``, and a public integer scales ``z``. Every ``z`` must stay
below ``2**62`` in magnitude, as for ``truncate_dealer``.

With 2 parties and the explicit local truncation (``CRYPTEN_LITE_TRUNCATION=local``) nothing is
pending: :func:`lazy` truncates locally at once (0 rounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from crypten_lite.protocols.beaver import material_parts
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.truncation import resolve_method, truncate_local
from crypten_lite.runtime.dealer import DealerRequest
from crypten_lite.runtime.dealer.arith_kinds import broadcast_shape, fused_terms
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import logical_rshift

__all__ = ["Operand", "Pending", "lazy", "mul_fused", "settle", "settle_many", "settled_value"]

Tensor = torch.Tensor
_SHIFT = 62  # z + 2**62 is in [0, 2**63) for |z| < 2**62


@dataclass(eq=False)
class Pending:
    """A sharing awaiting exact truncation: the value ``trunc(share / 2**bits)``.

    Attributes:
        share: this party's int64 share of ``z`` (``|z| < 2**62``), at ``bits`` more
            fractional bits than the value it stands for.
        bits: ``k`` in ``[1, 62]``.
    """

    share: Tensor
    bits: int

    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    def __repr__(self) -> str:
        return f"Pending(shape={tuple(self.share.shape)}, bits={self.bits})"

    def aligned(self, bits: int) -> Pending:
        """The same value with ``bits >= self.bits`` (``z`` shifted left: exact)."""
        return Pending(self.share << (bits - self.bits), bits)

    def __add__(self, other: Pending | Tensor) -> Pending:
        """Sum with a pending value (aligned to the larger ``bits``) or a plain sharing at the
        value's scale (added as ``x * 2**bits``, exact)."""
        if isinstance(other, Pending):
            k = max(self.bits, other.bits)
            return Pending(self.aligned(k).share + other.aligned(k).share, k)
        return Pending(self.share + (other << self.bits), self.bits)

    def __neg__(self) -> Pending:
        return Pending(-self.share, self.bits)

    def scaled(self, w: int) -> Pending:
        """``w`` times the value for a public integer ``w`` (the caller keeps ``|w z| < 2**62``)."""
        return Pending(self.share * w, self.bits)


Operand = Tensor | Pending


def settled_value(v: Operand, settled: dict[int, Tensor]) -> Tensor:
    """``v`` as truncated by the fused round it rode in (``settled``, filled by
    :func:`mul_fused`); a plain sharing is itself."""
    return settled[id(v)] if isinstance(v, Pending) else v


def lazy(z: Tensor, party: Party, bits: int) -> Operand:
    """``z`` to be truncated by ``bits``: a :class:`Pending` with the exact (dealer) method,
    truncated at once with the 2-party local method (no rounds either way)."""
    if bits == 0:
        return z
    if resolve_method(party) == "local":
        return truncate_local(z, party, bits)
    return Pending(z, bits)


def settle(x: Operand, party: Party, *, tag: str = "fused.settle") -> Tensor:
    """A pending value truncated on its own (a plain sharing is returned as it is).

    Cost: 1 round for a :class:`Pending` (as
    :func:`~crypten_lite.protocols.truncation.truncate_dealer`), 0 otherwise.
    Security and reference: as ``truncate_dealer``.
    """
    return settle_many([x], party, tag=tag)[0]


def settle_many(xs: Sequence[Operand], party: Party, *, tag: str = "fused.settle") -> list[Tensor]:
    """:func:`settle` of several values, all pending ones opened in one round."""
    out: list[Tensor | None] = [x if isinstance(x, Tensor) else None for x in xs]
    todo = [i for i, x in enumerate(xs) if isinstance(x, Pending)]
    if not todo:
        return [x for x in out if x is not None]
    if resolve_method(party) == "local":
        for i in todo:
            p = xs[i]
            assert isinstance(p, Pending)
            out[i] = truncate_local(p.share, party, p.bits)
        return [x for x in out if x is not None]
    flat = [xs[i] for i in todo]
    res = _fused(flat, [], party, tag)[0]
    for i, r in zip(todo, res, strict=True):
        out[i] = r.view(xs[i].shape)
    return [x for x in out if x is not None]


def mul_fused(
    pairs: Sequence[tuple[Operand, Operand]],
    party: Party,
    *,
    tag: str = "fused.mul",
    settled: dict[int, Tensor] | None = None,
    extra: Sequence[Pending] = (),
) -> list[Tensor]:
    """Elementwise products of operands that may be pending, in one round, untruncated.

    1. Each distinct operand (by identity and shape, at its own shape: a per-row factor is
       opened once per row) takes a fresh uniform mask ``[u]`` from one ``fused`` dealer item
       whose cross terms broadcast like the products (Beaver's broadcasting form). Plain ``x``: open ``e = x - u``.
       Pending ``(z, k)``: open ``c = z + 2**62 + u`` (party 0 adds ``2**62``). One message
       per peer for everything.
    2. Per operand, ``X = P + L`` with public ``P`` and shares ``[L]``: plain ``P = e``,
       ``L = [u]``; pending ``P = (c >> k) - 2**(62-k)``, ``L = -[u >> k] + W [msb(u)]``,
       ``W = 2**(64-k) (1 - msb(c))`` (the exact truncation of ``truncate_dealer``, steps 3-4).
    3. Per product: ``[X Y] = P_X P_Y + P_X [L_Y] + P_Y [L_X] + [L_X L_Y]`` (party 0 adds
       ``P_X P_Y``), ``[L_X L_Y]`` from the dealer's cross terms with public coefficients;
       squares ``[X**2] = P**2 + 2 P [L] + [L**2]``.

    Args:
        pairs: ``(x, y)`` with shapes that broadcast; a pending operand's ``z`` below ``2**62``.

        settled: if given, receives ``id(p) -> settled value`` for every pending operand ``p``
            used at its own shape: its truncation comes with the round at no extra cost.
        extra: pending values to settle in the same round (into ``settled``; 8 bytes per
            element each).

    Returns:
        The products, untruncated (at the sum of the operands' scales), broadcast shapes.

    Error: each pending operand is exactly what ``truncate_dealer`` would return
    (``floor(z / 2**k)`` or one more), so the products are exact for those operands.
    Cost: 1 round; each party sends ``8`` bytes per element of each distinct operand (at its
    own shape) to each peer. The dealer sends, per product, up to 3 (2 for a square) cross terms instead of the
    triple's one.
    Security: semi-honest, any ``N - 1`` colluding parties, dealer not colluding. Every opened
    value is masked by its own fresh uniform ``u`` over the whole ring, so ``c`` and ``e`` are
    uniform and independent of the data; ``P`` and ``W`` are functions of them. ``[L]`` and the
    cross terms are shares of dealer randomness (functions of ``u`` only), combined with public
    coefficients; the output is a sharing like a Beaver product's. A pending value consumed by
    two rounds is opened twice with independent masks: ``c_1 - c_2 = u_1 - u_2`` is
    independent of ``z`` (the two settled values may differ by one ulp).
    Reference: truncation pairs after Catrina and Saxena, FC'10 (with the wrap correction of
    :func:`~crypten_lite.protocols.truncation.truncate_dealer`); Beaver, CRYPTO'91. Fusing the
    truncation's opening into the Beaver opening (the truncated value's mask playing the
    role of the Beaver mask) is this library's construction, derived above.
    """
    if not pairs and not extra:
        return []
    if resolve_method(party) == "local":
        # nothing is pending with local truncation; settle stray pending values locally
        plain = [(settle(x, party), settle(y, party)) for x, y in pairs]
        if settled is not None:
            for (x, y), (sx, sy) in zip(pairs, plain, strict=True):
                settled[id(x)], settled[id(y)] = sx, sy
            for e in extra:
                settled[id(e)] = settle(e, party)
        pairs = plain
    operands: list[Operand] = []
    index: dict[tuple[int, tuple[int, ...]], int] = {}
    prods: list[tuple[int, int]] = []
    shapes: list[torch.Size] = []
    for x, y in pairs:
        shape = torch.Size(broadcast_shape(tuple(x.shape), tuple(y.shape)))
        shapes.append(shape)
        ids = []
        for v in (x, y):
            # each operand is opened at its own shape (a per-row factor once per row); the
            # dealer's cross terms broadcast like the product
            key = (id(v), tuple(v.shape))
            if key not in index:
                index[key] = len(operands)
                operands.append(v)
            ids.append(index[key])
        prods.append((min(ids), max(ids)))
    for e in extra:
        key = (id(e), tuple(e.shape))
        if key not in index:
            index[key] = len(operands)
            operands.append(e)
    values, outs = _fused(operands, prods, party, tag)
    if settled is not None:
        for (ident, own), i in index.items():
            v = operands[i]
            if isinstance(v, Pending) and id(v) == ident:  # operands keep their own shapes
                settled[ident] = values[i].view(own)
    return [o.view(s) for o, s in zip(outs, shapes, strict=True)]


def _fused(
    operands: Sequence[Operand], prods: Sequence[tuple[int, int]], party: Party, tag: str
) -> tuple[list[Tensor], list[Tensor]]:
    """(settled operands, flat; untruncated products, flat) of one opening round."""
    bits = [x.bits if isinstance(x, Pending) else 0 for x in operands]
    for k in bits:
        if not 0 <= k <= _SHIFT:
            raise ValueError(f"party {party.rank}: pending bits must be in [1, 62], got {k}")
    flat = [(x.share if isinstance(x, Pending) else x).reshape(-1) for x in operands]
    oshapes = [tuple(x.shape) for x in operands]
    pshapes = [broadcast_shape(oshapes[i], oshapes[j]) for i, j in prods]
    params: dict[str, object] = {
        "operands": [[t.numel(), k] for t, k in zip(flat, bits, strict=True)],
        "products": [[i, j] for i, j in prods],
    }
    if any(oshapes[i] != oshapes[j] for i, j in prods):
        params["shapes"] = [list(sh) for sh in oshapes]
    request = DealerRequest("fused", params)
    batch = party.dealer.request([request])
    (*masks,), derived = material_parts(batch, 0, len(flat))
    opened_in = []
    for t, u, k in zip(flat, masks, bits, strict=True):
        if k:
            m = t + u
            if party.rank == 0:
                m += 1 << _SHIFT
        else:
            m = t - u
        opened_in.append(m)
    opened = open_shares(opened_in, party, tag=tag)
    assert opened is not None
    comps = iter(derived())
    # Per operand: the public P, the coefficients (public int or tensor) of its basis and the
    # basis shares, and [L] = sum coef * basis (the Beaver mask's role).
    pub: list[Tensor] = []
    lin: list[list[tuple[Tensor | int, Tensor]]] = []
    l_share: list[Tensor] = []
    settled: list[Tensor] = []
    for x, u, k, c_pub, sh in zip(flat, masks, bits, opened, oshapes, strict=True):
        x, u, c_pub = x.view(sh), u.view(sh), c_pub.view(sh)
        if k:
            hi, s = next(comps).view(sh), next(comps).view(sh)
            weight = ((c_pub >> 63) + 1) << (64 - k)  # W = (1 - msb(c)) 2**(64-k)
            p = logical_rshift(c_pub, k)
            p -= 1 << (_SHIFT - k)
            lv = s * weight
            lv -= hi  # L = W [s] - [r_hi]
            pub.append(p)
            lin.append([(-1, hi), (weight, s)])
            l_share.append(lv)
            settled.append(lv + p if party.rank == 0 else lv)  # outs below only read lv
        else:
            pub.append(c_pub)
            lin.append([(1, u)])
            l_share.append(u)  # L = [u]: no copy (the operand is its own settled value)
            settled.append(x)
    outs = []
    for (i, j), psh in zip(prods, pshapes, strict=True):
        pi, pj = pub[i], pub[j]
        if i == j:
            z = pi * l_share[i]
            z <<= 1  # 2 P [L]
            if bits[i]:
                # L**2 = hi**2 - 2 W hi s + W**2 s   (s**2 = s)
                h2, hs = next(comps).view(psh), next(comps).view(psh)
                w, s = lin[i][1]
                assert isinstance(w, Tensor)
                z += h2
                z.addcmul_(w, hs, value=-2)
                if bits[i] > 32:  # W**2 is a multiple of 2**(128 - 2k): 0 mod 2**64 for k <= 32
                    z.addcmul_(w * w, s)
            else:
                z += next(comps).view(psh)
            if party.rank == 0:
                z.addcmul_(pi, pi)
        else:
            z = pi * l_share[j]
            z.addcmul_(pj, l_share[i])
            n_terms = fused_terms(bits[i], bits[j], False)
            terms = [next(comps).view(psh) for _ in range(n_terms)]
            it = iter(terms)
            for ci, _ in lin[i]:
                for cj, _ in lin[j]:
                    term = next(it, None)
                    if term is None:  # [s s'] omitted: its coefficient W W' is 0 mod 2**64
                        continue
                    _add_scaled(z, term, ci, cj)
            if party.rank == 0:
                z.addcmul_(pi, pj)
        outs.append(z.reshape(-1))
    return [t.reshape(-1) for t in settled], outs


def _add_scaled(z: Tensor, term: Tensor, ci: Tensor | int, cj: Tensor | int) -> None:
    """``z += term * ci * cj`` in place, for public coefficients (ints or tensors)."""
    if isinstance(ci, int) and isinstance(cj, int):
        z.add_(term, alpha=ci * cj)
    elif isinstance(ci, int):
        assert isinstance(cj, Tensor)
        z.addcmul_(term, cj, value=ci)
    elif isinstance(cj, int):
        z.addcmul_(term, ci, value=cj)
    else:
        z.addcmul_(term, ci * cj)
