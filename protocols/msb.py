"""Layer L3 (primitive): the sign-bit circuit, :func:`sign_bits` — every comparison's core.

:func:`sign_bits` computes XOR shares of ``msb(x - t)`` for one arithmetic sharing
``[x]`` against any number of public thresholds ``t`` (ring values), in three rounds:

1. **Mask.** The dealer deals a uniform ``[r]`` together with, for each 4-bit digit ``r_j`` of
   ``r`` (digit 15: bits 60..62), a reversed thermometer code ``<T_j>`` (16 bits, bit ``w``
   is ``[r_j >= 15 - w]``). The parties open ``c = x + r``. With ``c' = c - t``:
   ``x - t = c' - r``, and ``msb(x - t) = c'_63 ^ r_63 ^ [r_low > c'_low]`` on the low 63
   bits.
2. **Digits (local).** Shifting ``T_j`` left by the public digit ``c'_j`` puts
   ``[r_j >= c'_j]`` in bit 15 and ``[r_j >= c'_j + 1] = [r_j > c'_j]`` in bit 14 (a zero
   enters for ``c'_j = 15``): a (greater, equal) pair per digit, no interaction.
3. **Two 4-ary combining layers.** A node merges four (G, E) pairs into
   ``G = G3 ^ E3 G2 ^ E3 E2 G1 ^ E3 E2 E1 G0`` and ``E = E3 E2 E1 E0`` in *one* round: the
   eight inputs are opened masked (``d = x ^ a``, one byte), and every monomial expands as
   ``XOR_S (prod_{not S} d) (prod_S a)``, so each output is the parity of the dealer's subset
   products ``<A>`` (23 bits for G, 16 for E) selected by a public word ``W[d]``. Layer 2 maps
   16 digits to 4 groups (4 bytes opened), layer 3 maps 4 groups to the result (1 byte);
   ``r_63`` is folded into bit 31 of the layer-3 products, so the output *is*
   ``msb(x - t)``. Parities are two shift-XOR folds and one multiplication per word.

Per element and threshold, each party sends ``8`` bytes (``c``, shared by all thresholds of
one ``x``) + ``4 + 1`` bytes (the two layers) to each peer. The compositions — bit injection,
``ltz``, ``relu``, ``clamp``, ``eq``... — are in :mod:`crypten_lite.protocols.comparison`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from crypten_lite.protocols.opening import open_shares, open_xor_shares
from crypten_lite.runtime.dealer import (
    CMP_L2_E,
    CMP_L2_G,
    CMP_L3_G,
    DealerBatch,
    DealerRequest,
    digits16,
    node_subsets,
    padded,
    pair_table,
)
from crypten_lite.runtime.party import Party

__all__ = ["SignBits", "Threshold", "cmp_request", "sign_bits"]

Tensor = torch.Tensor
Threshold = int | Tensor

_SH2 = torch.tensor([0, 2, 4, 6, 8, 10, 12, 14], dtype=torch.int16)
_NIBBLE_LOW = 0x1111111111111111
_BITS_AB = (1 << 28) | (1 << 60)
_BITS_C = (1 << 28) | (1 << 44) | (1 << 60)


def _selection(monomials: Sequence[int]) -> Tensor:
    """``(256,)`` int64: for an opened input byte ``d``, bit ``s`` of the word selects the
    subset product ``s`` (of :func:`~crypten_lite.runtime.dealer.node_subsets`) in the node output
    ``XOR_T prod_T x``: ``XOR over monomials T >= S of [d covers T - S]``."""
    subsets = node_subsets(monomials)
    words = []
    for d in range(256):
        word = 0
        for s, subset in enumerate(subsets):
            bit = 0
            for mono in monomials:
                if subset & ~mono == 0:
                    rest = mono & ~subset
                    bit ^= int(d & rest == rest)
            word |= bit << s
        words.append(word)
    return torch.tensor(words, dtype=torch.int64)


@functools.cache
def _node_select() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Selection tables matching the dealer's ``cmp`` layout: layer-2 G words for node pairs
    (65536 entries), E words for nodes (2, 3) in fields 2, 3 (65536) and for node 1 in field 1
    (256), and the layer-3 G word with bit 31 set (it selects ``msb(r)``)."""
    g2, e2 = _selection(CMP_L2_G), _selection(CMP_L2_E)
    g3 = (_selection(CMP_L3_G) | (1 << 31)).to(torch.int32)
    return pair_table(g2, 0, 32), pair_table(e2, 32, 48), e2 << 16, g3


def _nibble_parity(v: Tensor, fields: int) -> Tensor:
    """Parity of each ``64 / fields``-bit field, left in the field's top nibble's low bit.

    Two folds leave each nibble's parity in its low bit; the multiplication adds the nibbles of
    a field into its top nibble (at most 8 terms, so no carry leaves the nibble).
    """
    tmp = torch.bitwise_right_shift(v, 1)
    v = v ^ tmp
    torch.bitwise_right_shift(v, 2, out=tmp)
    v ^= tmp
    if v.dtype == torch.int32:
        v &= 0x11111111
        v *= 0x11111111
        return v
    v &= _NIBBLE_LOW
    v *= 0x11111111 if fields == 2 else 0x1111
    return v


@dataclass(eq=False)
class SignBits:
    """XOR-shared ``msb(x - t_j)`` for ``k`` thresholds, and what injecting them needs.

    Attributes:
        bits: ``(k, n_pad)`` int64 0/1 XOR shares (elements flattened, padded to 64).
        c_pub: ``(n_pad,)`` the opened ``x + r``.
        rho: ``(k, n_pad / 64)`` packed XOR shares of the injection masks.
        rho_a: ``(k, n_pad)`` arithmetic shares of the same mask bits.
        r_rho: ``(k, n_pad)`` shares of ``r * rho`` (only with ``mul=True``).
        extra_pub: arithmetic values opened together with ``c`` (see :func:`sign_bits`).
        n: number of real elements; shape: their shape.
    """

    bits: Tensor
    c_pub: Tensor
    rho: Tensor
    rho_a: Tensor
    r_rho: Tensor | None
    extra_pub: list[Tensor]
    n: int
    shape: torch.Size

    def unflatten(self, t: Tensor) -> Tensor:
        """``(k, n_pad)`` -> ``(k, *shape)`` (drops padding)."""
        return t[:, : self.n].reshape(t.shape[0], *self.shape)


def cmp_request(n_pad: int, count: int, mul: bool = False) -> DealerRequest:
    """The dealer request behind :func:`sign_bits` for ``n_pad`` (a multiple of 64) elements
    and ``count`` thresholds.

    Cost: none (builds the request). Security and reference: as :func:`sign_bits`.
    """
    return DealerRequest("cmp", {"n": n_pad, "count": count, "mul": bool(mul)})


def _threshold_rows(thresholds: Sequence[Threshold], shape: torch.Size, n_pad: int) -> Tensor:
    rows = []
    n = 1
    for d in shape:
        n *= d
    for t in thresholds:
        if isinstance(t, Tensor):
            t = torch.broadcast_to(t.to(torch.int64), shape).reshape(-1)
            rows.append(F.pad(t, (0, n_pad - n)))
        else:
            rows.append(torch.full((n_pad,), int(t), dtype=torch.int64))
    return torch.stack(rows)


def sign_bits(
    x: Tensor,
    party: Party,
    thresholds: Sequence[Threshold] = (0,),
    *,
    mul: bool = False,
    extra: Sequence[Tensor] = (),
    tag: str = "cmp",
    batch: DealerBatch | None = None,
    index: int = 0,
) -> SignBits:
    """XOR shares of ``[x < t]`` = ``msb(x - t)`` for every public threshold ``t`` (3 rounds).

    See the module docstring for the protocol:

    1. ``[r]``, ``<T>`` and per-threshold node material from the dealer; open ``c = x + r``
       (with ``extra`` arithmetic tensors in the same message).
    2. Per threshold: ``c' = c - t``; digit (G, E) pairs from ``<T>`` by public shifts.
    3. Layer 2: open the 16 masked pairs (4 bytes); four node outputs by parity.
    4. Layer 3: open the 4 masked pairs (1 byte); ``msb = parity(<A3> & W[d]) ^ c'_63``.

    Args:
        x: int64 shares, any shape.
        thresholds: public ring values (ints, or int64 tensors broadcastable to ``x``).
        mul: also deal ``[r * rho]`` so the bits can multiply ``x`` itself without another
            opening (ReLU, abs, max of two).
        extra: arithmetic shares to open in the first round (already masked by the caller).
        batch, index: the dealer material, item ``index`` of a batch requested by the caller
            with :func:`cmp_request` (to share one dealer round trip with other requests).

    Returns:
        :class:`SignBits`; ``bits[j]`` is ``x < t_j`` whenever ``x - t_j`` does not overflow.

    Cost: 3 rounds; each party sends ``8 + 5 k`` bytes per element to each peer (``k``
    thresholds). Dealer material per element: ``8 + 32`` bytes shared by the thresholds plus
    ``41`` per threshold (``+8`` with ``mul``), seed-compressed; with a dealer process party 0
    receives the derived part in one round trip that overlaps the first opening.
    Security: semi-honest; ``r`` uniform so ``c`` is uniform; every node input is masked by a
    fresh uniform dealer bit, so ``d`` is uniform; outputs stay XOR-shared.
    Reference: masked comparison with edaBits, Escudero et al., CRYPTO'20 and Makri et al.,
    "Rabbit", CT-RSA'21; digit-wise comparison with precomputed lookups as in Rathee et al.,
    "CrypTFlow2", CCS'20; constant-round multi-fan-in ANDs from preprocessed mask products,
    Damgard et al., TCC'06.
    """
    shape = x.shape
    n = x.numel()
    n_pad = padded(max(n, 1))
    k = len(thresholds)
    if k == 0:
        raise ValueError(f"party {party.rank}: sign_bits needs at least one threshold")
    flat = F.pad(x.reshape(-1), (0, n_pad - n))
    if batch is None:
        batch, index = party.dealer.request([cmp_request(n_pad, k, mul)]), 0
    r, m2, m3, rho = batch.free(index)
    # the opening needs only the free [r]: a dealer process's reply arrives meanwhile
    opened = open_shares([flat + r, *extra], party, tag=f"{tag}.mask")
    assert opened is not None
    items = batch.item(index)
    therm, a2, a3, rho_a = items[4:8]
    r_rho = items[8] if mul else None
    c_pub, extra_pub = opened[0], opened[1:]
    cp = c_pub.unsqueeze(0) - _threshold_rows(thresholds, shape, n_pad)  # (k, n_pad)

    # Each 4-bit digit c'_j selects from <T_j> (bit w = [r_j >= 15 - w]) by a left shift:
    # bit 15 of T_j << c'_j is [r_j >= c'_j], bit 14 is [r_j >= c'_j + 1] = G_j (0 for 15).
    # (in place where possible: these are the largest tensors of the protocol)
    t16 = therm.view(torch.int16).view(n_pad, 16)
    y = digits16(cp)
    torch.bitwise_left_shift(t16, y, out=y)
    y >>= 14
    y &= 3  # bit 0: G_j, bit 1: [r_j >= c'_j]
    y.view(k, n_pad, 2, 8).bitwise_left_shift_(_SH2)
    u = y.view(k, n_pad, 2, 8).sum(-1, dtype=torch.int16).view(torch.int32)
    u = u.view(k, n_pad)
    u ^= (u & 0x55555555) << 1  # bit 2j: G_j, bit 2j + 1: E_j = [r_j >= c'_j] ^ G_j
    masked2 = u ^ m2.view(torch.int32).view(k, n_pad)

    opened2 = open_xor_shares([masked2.view(torch.int64)], party, tag=f"{tag}.l2")
    assert opened2 is not None
    wg2, we23, we1, w3 = _node_select()
    pairs = opened2[0].view(torch.uint16).view(k, n_pad, 2).to(torch.int64)  # nodes (0,1), (2,3)
    layer2 = a2.view(k, n_pad, 3)
    v_ab = wg2[pairs]
    v_ab &= layer2[..., :2]
    v_ab = _nibble_parity(v_ab, 2)  # G0, G1 | G2, G3 at bits 28, 60
    v_c = we23[pairs[..., 1]]
    v_c |= we1[pairs[..., 0] >> 8]
    v_c &= layer2[..., 2]
    v_c = _nibble_parity(v_c, 4)  # E1, E2, E3 at bits 28, 44, 60
    word = (v_ab[..., 0] & _BITS_AB) | ((v_ab[..., 1] & _BITS_AB) >> 1) | ((v_c & _BITS_C) >> 2)
    byte = ((word >> 26) & 7) | ((word >> 55) & 0x38) | ((word >> 36) & 0x40)  # layer-3 order
    masked3 = byte.to(torch.uint8) ^ m3.view(torch.uint8).view(k, n_pad)

    opened3 = open_xor_shares([masked3.view(torch.int64)], party, tag=f"{tag}.l3")
    assert opened3 is not None
    d3 = opened3[0].view(torch.uint8).view(k, n_pad).to(torch.int64) & 0x7F
    v3 = _nibble_parity(a3.view(torch.int32).view(k, n_pad) & w3[d3], 1)
    bits = ((v3 >> 28) & 1).to(torch.int64)
    if party.rank == 0:
        bits ^= (cp >> 63) & 1
    return SignBits(
        bits=bits,
        c_pub=c_pub,
        rho=rho,
        rho_a=rho_a,
        r_rho=r_rho,
        extra_pub=list(extra_pub),
        n=n,
        shape=shape,
    )
