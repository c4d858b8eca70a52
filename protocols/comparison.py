"""Layer L3 (composition): comparisons built on the sign-bit primitive.

:func:`~crypten_lite.protocols.msb.sign_bits` (module :mod:`crypten_lite.protocols.msb`, 3
rounds) gives XOR shares of ``msb(x - t)`` for public thresholds ``t``. Everything here adds
one round of bit injection (:mod:`crypten_lite.protocols.conversion`) to turn bits into
arithmetic 0/1 shares, or to multiply them by a value. For ``x * b`` with the compared ``x``
itself the opened ``c = x + r`` already masks ``x``: ``x rho = c rho - r rho``, so ReLU costs
4 rounds and no extra opening.

Per comparison and element, each party sends ``8`` bytes (``c``, shared by all thresholds of
one ``x``) + ``4 + 1`` bytes per threshold (the two layers) + ``1/8`` byte per injected bit to
each peer: 13.1 bytes for one threshold.

Every function here has the same security and references, stated once: semi-honest; every
opened value is uniformly masked (see :func:`~crypten_lite.protocols.msb.sign_bits`);
Escudero et al., CRYPTO'20 (edaBits) for the masked comparison and Rotaru and Wood,
INDOCRYPT'19 for bit injection (and the product through the opened ``x + r``). Docstrings
below give steps and cost only where they differ.

Conventions: results are arithmetic shares of ring integers 0/1 (scale 0); shift left by
``f`` (``<< party.frac_bits``, local) for fixed-point 0.0/1.0. Comparing ``x`` with ``y`` is
exact whenever ``x - y`` does not overflow the ring (any two fixed-point values with
``|x|, |y| < 2**(62 - f)``); ``ltz`` is exact on the whole ring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from crypten_lite.errors import EncodingError
from crypten_lite.protocols.beaver import beaver
from crypten_lite.protocols.conversion import inject_masked, open_masked_bits
from crypten_lite.protocols.msb import SignBits, Threshold, cmp_request, sign_bits
from crypten_lite.runtime.encoding import encode
from crypten_lite.runtime.party import Party

__all__ = [
    "SignBits",
    "abs_",
    "abs_and_sign",
    "clamp",
    "cmp_request",
    "eq",
    "eq_public",
    "ge",
    "ge_public",
    "gt",
    "gt_public",
    "le",
    "le_public",
    "lt",
    "lt_public",
    "ltz",
    "maximum",
    "minimum",
    "ne",
    "ne_public",
    "public_threshold",
    "relu",
    "sign",
    "sign_bits",
    "where",
]

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------- injection
def _inject(sb: SignBits, party: Party, bits: Tensor | None = None, *, tag: str) -> Tensor:
    """Arithmetic ``(k, n_pad)`` shares of ``bits`` (default ``sb.bits``) with ``sb``'s masks."""
    d_pub = open_masked_bits(sb.bits if bits is None else bits, sb.rho, party, tag=tag)
    return inject_masked(d_pub, sb.rho_a, party)


def _inject_times_x(
    sb: SignBits, x_flat: Tensor, party: Party, *, tag: str
) -> tuple[Tensor, Tensor]:
    """``([b], [x * b])`` for every row of ``sb.bits``, where ``x`` is the compared value.

    ``x = c - r`` with the opened ``c``, so ``[x rho] = c [rho] - [r rho]`` needs no opening:
    ``[x b] = d [x] + (1 - 2d) [x rho]`` with ``d = b ^ rho``.
    """
    assert sb.r_rho is not None
    d_pub = open_masked_bits(sb.bits, sb.rho, party, tag=tag)
    b = inject_masked(d_pub, sb.rho_a, party)
    x_rho = sb.c_pub * sb.rho_a - sb.r_rho
    xb = d_pub * x_flat + (1 - 2 * d_pub) * x_rho
    return b, xb


def _flat(x: Tensor, n_pad: int) -> Tensor:
    return F.pad(x.reshape(-1), (0, n_pad - x.numel()))


def _one_minus(b: Tensor, party: Party) -> Tensor:
    out = -b
    if party.rank == 0:
        out += 1
    return out


# ---------------------------------------------------------------------------------- thresholds
def public_threshold(value: float | int | Tensor, frac_bits: int, *, strict: bool) -> Tensor:
    """The ring threshold ``t`` with ``[x < value] == [x_ring < t]`` (``strict``) or
    ``[x <= value] == [x_ring < t]`` for fixed-point ``x`` with ``frac_bits`` bits: exact for
    any real ``value`` (``ceil(value * 2**f)``, resp. ``floor(value * 2**f) + 1``).

    Cost: local, public values only.
    Security: no secrets involved.
    Reference: exact fixed-point comparison thresholds (this library).
    """
    t = torch.as_tensor(value)
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if t.is_floating_point():
        scaled = t.to(torch.float64) * float(1 << frac_bits)
        if not bool(torch.isfinite(scaled).all()) or bool((scaled.abs() >= 2.0**62).any()):
            raise EncodingError(f"comparison threshold out of the fixed-point range: {value}")
        ring = torch.ceil(scaled) if strict else torch.floor(scaled) + 1
        return ring.to(torch.int64)
    t = t.to(torch.int64)
    limit = 1 << (62 - frac_bits)
    if t.numel() and (int(t.max()) >= limit or int(t.min()) < -limit):
        raise EncodingError(f"comparison threshold out of the fixed-point range: {value}")
    return (t << frac_bits) if strict else (t << frac_bits) + 1


def _cmp_public(
    x: Tensor, thresholds: Sequence[Threshold], party: Party, tag: str
) -> tuple[Tensor, SignBits]:
    sb = sign_bits(x, party, thresholds, tag=tag)
    return sb.unflatten(_inject(sb, party, tag=f"{tag}.b2a")), sb


# ---------------------------------------------------------------------------------- public API
def ltz(x: Tensor, party: Party) -> Tensor:
    """``[x < 0]`` of a sharing (any scale): arithmetic 0/1 shares (scale 0).

    1. :func:`sign_bits` with threshold 0: XOR shares of ``msb(x)`` (3 rounds).
    2. Bit injection: open ``d = msb ^ rho``, return ``d + (1 - 2d) [rho]``.

    Exact on the whole ring (``x`` read as a signed 64-bit integer).

    Cost: 4 rounds; each party sends ``8 + 5 + 1/8 = 13.1`` bytes per element to each peer.
    Security: semi-honest; every opened value is uniformly masked (see :func:`sign_bits`).
    Reference: Escudero et al., CRYPTO'20 (edaBits); Rotaru and Wood, INDOCRYPT'19 (bit
    injection); see the module docstring.
    """
    return _cmp_public(x, [0], party, "ltz")[0][0]


def lt(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x < y]`` for two sharings: :func:`ltz` of ``x - y`` (4 rounds, 13.1 B/element/peer).

    Cost, security and reference: as :func:`ltz`.
    """
    return ltz(x - y, party)


def le(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x <= y]``: ``[x - y < 1]`` in ring units (4 rounds, 13.1 B/element/peer).

    Cost, security and reference: as :func:`ltz`.
    """
    return _cmp_public(x - y, [1], party, "le")[0][0]


def gt(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x > y]``: :func:`lt` with the operands swapped.

    Cost, security and reference: as :func:`ltz`.
    """
    return ltz(y - x, party)


def ge(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x >= y]``: :func:`le` with the operands swapped.

    Cost, security and reference: as :func:`ltz`.
    """
    return le(y, x, party)


def _eq_bits(z: Tensor, party: Party, thresholds: Sequence[Threshold], tag: str) -> Tensor:
    # [lo <= z < hi] = [z < hi] ^ [z < lo] for lo <= hi: one injected bit.
    sb = sign_bits(z, party, thresholds, tag=tag)
    both = sb.bits[0:1] ^ sb.bits[1:2]
    return sb.unflatten(_inject(sb, party, both, tag=f"{tag}.b2a"))[0]


def eq(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x == y]`` for two sharings.

    1. :func:`sign_bits` of ``z = x - y`` against thresholds 1 and 0 (one opening of ``z``).
    2. ``[z == 0] = [z < 1] ^ [z < 0]``: inject that one bit.

    Exact unless ``x - y`` overflows (``z = -2**63``).

    Cost: 4 rounds; each party sends ``8 + 10 + 1/8`` bytes per element to each peer.
    Security and reference: as :func:`ltz`.
    """
    return _eq_bits(x - y, party, [1, 0], "eq")


def ne(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x != y] = 1 - [x == y]`` (cost of :func:`eq`).

    Cost, security and reference: as :func:`eq`.
    """
    return _one_minus(eq(x, y, party), party)


def lt_public(
    x: Tensor, value: float | int | Tensor, party: Party, *, frac_bits: int | None = None
) -> Tensor:
    """``[x < v]`` for a public real ``v`` (float, int or tensor; compared as a real number).

    ``x`` has ``frac_bits`` fractional bits (default ``party.frac_bits``; 0 for ring integers).
    The threshold ``ceil(v * 2**f)`` makes the result exact for every real ``v``.

    Cost, security and reference: as :func:`ltz`.
    """
    f = party.frac_bits if frac_bits is None else frac_bits
    return _cmp_public(x, [public_threshold(value, f, strict=True)], party, "lt")[0][0]


def le_public(
    x: Tensor, value: float | int | Tensor, party: Party, *, frac_bits: int | None = None
) -> Tensor:
    """``[x <= v]`` for a public real ``v`` (threshold ``floor(v * 2**f) + 1``; as :func:`lt_public`).

    Cost, security and reference: as :func:`lt_public`.
    """
    f = party.frac_bits if frac_bits is None else frac_bits
    return _cmp_public(x, [public_threshold(value, f, strict=False)], party, "le")[0][0]


def gt_public(
    x: Tensor, value: float | int | Tensor, party: Party, *, frac_bits: int | None = None
) -> Tensor:
    """``[x > v] = 1 - [x <= v]`` for a public ``v`` (as :func:`lt_public`).

    Cost, security and reference: as :func:`lt_public`.
    """
    return _one_minus(le_public(x, value, party, frac_bits=frac_bits), party)


def ge_public(
    x: Tensor, value: float | int | Tensor, party: Party, *, frac_bits: int | None = None
) -> Tensor:
    """``[x >= v] = 1 - [x < v]`` for a public ``v`` (as :func:`lt_public`).

    Cost, security and reference: as :func:`lt_public`.
    """
    return _one_minus(lt_public(x, value, party, frac_bits=frac_bits), party)


def eq_public(
    x: Tensor, value: float | int | Tensor, party: Party, *, frac_bits: int | None = None
) -> Tensor:
    """``[x == v]`` for a public real ``v``: ``[x <= v] ^ [x < v]`` (zero if ``v`` is not
    representable).

    Cost, security and reference: as :func:`eq`.
    """
    f = party.frac_bits if frac_bits is None else frac_bits
    hi = public_threshold(value, f, strict=False)
    lo = public_threshold(value, f, strict=True)
    return _eq_bits(x, party, [hi, lo], "eq")


def ne_public(
    x: Tensor, value: float | int | Tensor, party: Party, *, frac_bits: int | None = None
) -> Tensor:
    """``[x != v] = 1 - [x == v]`` for a public ``v`` (cost of :func:`eq`).

    Cost, security and reference: as :func:`eq_public`.
    """
    return _one_minus(eq_public(x, value, party, frac_bits=frac_bits), party)


def sign(x: Tensor, party: Party) -> Tensor:
    """``[sign(x)]`` in ``{-1, 0, 1}`` (ring integers, scale 0), ``sign(0) = 0`` as in torch.

    1. :func:`sign_bits` of ``x`` against thresholds 1 and 0: ``a = [x <= 0]``, ``b = [x < 0]``.
    2. Inject both bits in one round; return ``1 - a - b``.

    Cost: 4 rounds; each party sends ``8 + 10 + 1/4`` bytes per element to each peer.
    Security and reference: as :func:`ltz`.
    """
    ab, _ = _cmp_public(x, [1, 0], party, "sign")
    return _one_minus(ab[0] + ab[1], party)


def relu(x: Tensor, party: Party) -> tuple[Tensor, Tensor]:
    """``[max(x, 0)]`` and the arithmetic 0/1 mask ``[x > 0]`` (for the backward pass).

    1. :func:`sign_bits` of ``x`` against threshold 1 (``b = [x <= 0]``), with ``[r rho]``.
    2. Inject ``b`` and multiply it by ``x`` in the same round: ``d = b ^ rho`` opened,
       ``[x b] = d [x] + (1 - 2d)(c [rho] - [r rho])`` since the opened ``c = x + r``.
    3. Return ``[x] - [x b]`` and ``1 - [b]``.

    The mask is ``[x > 0]``, torch's ``threshold_backward`` rule, so the backward pass costs one
    product ``grad * mask`` and no comparison. Exact (no truncation) for ``x > -2**63``.

    Cost: 4 rounds; each party sends ``8 + 5 + 1/8 = 13.1`` bytes per element to each peer.
    Security and reference: as :func:`ltz` (the product through the opened ``x + r`` follows
    the bit injection with multiplication of Rotaru and Wood, INDOCRYPT'19).
    """
    sb = sign_bits(x, party, [1], mul=True, tag="relu")
    b, xb = _inject_times_x(sb, _flat(x, sb.c_pub.numel()), party, tag="relu.b2a")
    out = sb.unflatten(_flat(x, sb.c_pub.numel()).unsqueeze(0) - xb)[0]
    return out, sb.unflatten(_one_minus(b, party))[0]


def abs_(x: Tensor, party: Party) -> Tensor:
    """``[|x|] = x - 2 x [x < 0]``, exact for ``x > -2**63``.

    Cost, security and reference: as :func:`relu`.
    """
    sb = sign_bits(x, party, [0], mul=True, tag="abs")
    x_flat = _flat(x, sb.c_pub.numel())
    _, xb = _inject_times_x(sb, x_flat, party, tag="abs.b2a")
    return sb.unflatten(x_flat.unsqueeze(0) - 2 * xb)[0]


def abs_and_sign(x: Tensor, party: Party) -> tuple[Tensor, Tensor]:
    """``([|x|], [x < 0])`` from one comparison.

    Cost, security and reference: as :func:`relu`.
    """
    sb = sign_bits(x, party, [0], mul=True, tag="abs")
    x_flat = _flat(x, sb.c_pub.numel())
    b, xb = _inject_times_x(sb, x_flat, party, tag="abs.b2a")
    return sb.unflatten(x_flat.unsqueeze(0) - 2 * xb)[0], sb.unflatten(b)[0]


def maximum(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """Elementwise ``[max(x, y)] = y + relu(x - y)``.

    Cost, security and reference: as :func:`relu`.
    """
    z, _ = relu(x - y, party)
    return y + z


def minimum(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """Elementwise ``[min(x, y)] = x - relu(x - y)``.

    Cost, security and reference: as :func:`relu`.
    """
    z, _ = relu(x - y, party)
    return x - z


def where(cond: Tensor, x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[cond ? x : y] = y + cond * (x - y)`` for arithmetic 0/1 shares ``cond`` (scale 0).

    1. One Beaver product of ``cond`` and ``x - y`` (integer ``cond``: no truncation).

    ``x`` and ``y`` are shares at any (equal) scale; broadcasting as in torch.

    Cost: 1 round; each party sends ``8 * (numel(cond) + numel(x - y))`` bytes to each peer.
    Security: semi-honest, as Beaver multiplication.
    Reference: Beaver, CRYPTO'91.
    """
    diff = x - y
    return y + beaver("mul", cond, diff, party, tag="where")


def clamp(
    x: Tensor,
    party: Party,
    min: float | int | Tensor | None = None,  # noqa: A002 - torch's name
    max: float | int | Tensor | None = None,  # noqa: A002
    *,
    frac_bits: int | None = None,
) -> Tensor:
    """``[clamp(x, min, max)]`` for public bounds (reals, or tensors broadcastable to ``x``).

    1. :func:`sign_bits` of ``x`` against both bounds (one opening): ``a = [x <= min]``,
       ``b = [x <= max]``, with ``[r rho]``.
    2. Inject both bits and their products with ``x`` (one round).
    3. Return ``min a + max (1 - b) + x (b - a)`` (``a`` implies ``b`` for ``min <= max``).

    Bounds are encoded with ``frac_bits`` (default ``party.frac_bits``); exact otherwise.

    Cost: 4 rounds; each party sends ``8 + 10 + 1/4`` bytes per element to each peer (one
    bound: ``8 + 5 + 1/8``).
    Security and reference: as :func:`relu`.
    """
    f = party.frac_bits if frac_bits is None else frac_bits
    bounds = [(v, s) for v, s in ((min, 0), (max, 1)) if v is not None]
    if not bounds:
        return x.clone()
    ts = [public_threshold(v, f, strict=False) for v, _ in bounds]
    sb = sign_bits(x, party, ts, mul=True, tag="clamp")
    x_flat = _flat(x, sb.c_pub.numel())
    bits, xbits = _inject_times_x(sb, x_flat, party, tag="clamp.b2a")
    out = x_flat.clone()
    for row, (value, side) in enumerate(bounds):
        v_ring = _flat(torch.broadcast_to(encode(value, f), x.shape), x_flat.numel())
        if side == 0:  # below min: + (min - x) a
            out += v_ring * bits[row] - xbits[row]
        else:  # above max: + (max - x)(1 - b)
            above_x = x_flat - xbits[row]
            above = _one_minus(bits[row], party) * v_ring
            out += above - above_x
    return sb.unflatten(out.unsqueeze(0))[0]
