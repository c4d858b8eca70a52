"""Layer L3: products and public divisions on arithmetic sharings, at the ring level.

Every function takes and returns this party's int64 share and knows nothing of fixed point
beyond a number of bits: a product of sharings at scales ``2**a`` and ``2**b`` is at scale
``2**(a + b)``, and the caller (the one owner of fixed-point policy,
:mod:`crypten_lite.ops._fixed`, which classifies operands as integer or real, encodes public
ones and computes scales) says how many bits to truncate (``shift``). Public operands arrive
already encoded as int64 ring tensors.

Free operations are not wrapped here: sums, negation and every *shape* op apply to a share
exactly as to the value (the value is the sum of the shares), so callers use plain torch on the
share; a public constant is added by party 0 alone.

Error bounds use ulp = ``2**-f``. A truncation adds at most one ulp; see
:mod:`crypten_lite.protocols.truncation` for the methods and their failure probability
(``local``, 2 parties) or range (``dealer``, truncated values ``|x| < 2**62``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from crypten_lite.errors import EncodingError
from crypten_lite.protocols.beaver import (
    FixedOperand,
    beaver_online,
    beaver_request,
    check_share,
    output_shape,
)
from crypten_lite.protocols.opening import open_shares
from crypten_lite.protocols.truncation import (
    resolve_method,
    truncate,
    truncate_dealer,
    truncate_local_,
    truncation_request,
)
from crypten_lite.runtime.dealer import DealerRequest
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import BILINEAR_OPS

__all__ = ["div_public", "product", "public_product", "square"]

Tensor = torch.Tensor
Operand = Tensor | FixedOperand
Public = Tensor | float | int


def product(
    op: str,
    x: Operand,
    y: Operand,
    party: Party,
    op_params: Mapping[str, Any] | None = None,
    *,
    shift: int,
    tag: str | None = None,
) -> Tensor:
    """``[op(x, y) >> shift]``: a Beaver product, then truncation by ``shift`` bits.

    1. Fetch the triple (and, for ``dealer`` truncation with ``shift > 0``, the truncation pair
       in the same dealer request).
    2. :func:`~crypten_lite.protocols.beaver.beaver_online`: open ``eps``, ``delta``.
    3. Truncate the result by ``shift`` bits (none for ``shift = 0``).

    Cost: ``dealer`` truncation (the default, any N): 2 rounds, ``8 * (numel(x) + numel(y) +
    numel(out))`` bytes per peer. Opt-in ``local`` truncation (2 parties) or ``shift = 0``:
    1 round, ``8 * (numel(x) + numel(y))`` bytes per peer. A
    :class:`~crypten_lite.protocols.beaver.FixedOperand` side sends nothing.
    Error: the product is exact in the ring; truncation adds less than one unit of the result's
    scale (``local``: fails with probability ``(|z| + 2**shift) / 2**64`` per element, ``z``
    the untruncated value).
    Security: semi-honest, any ``N - 1`` colluding parties; as Beaver and truncation.
    Reference: Beaver, CRYPTO'91; Mohassel and Zhang, SecureML, IEEE S&P'17.
    """
    if shift < 0:
        raise ValueError(f"party {party.rank}: product shift must be >= 0, got {shift}")
    request = beaver_request(op, x, y, party, op_params)
    if shift == 0 or resolve_method(party) == "local":
        batch = party.dealer.request([request])
        z = beaver_online(op, x, y, batch, party, op_params=op_params, tag=tag)
        return truncate_local_(z, party, shift) if shift else z  # z is a fresh tensor of ours
    out = output_shape(op, tuple(x.shape), tuple(y.shape), party, op_params)
    batch = party.dealer.request([request, truncation_request(out, shift)])
    z = beaver_online(op, x, y, batch, party, op_params=op_params, tag=tag)
    return truncate_dealer(z, party, shift, batch, index=1)


def square(x: Tensor, party: Party, *, shift: int) -> Tensor:
    """``[x * x >> shift]`` with a square pair: opens one tensor instead of two.

    1. Take ``[a], [a*a]`` from the dealer (with the truncation pair for ``dealer``
       truncation).
    2. Open ``eps = [x] - [a]``.
    3. ``[z] = [a*a] + eps * ([x] + [a])``; summed: ``a² + (x - a)(x + a) = x²``.
    4. Truncate by ``shift`` bits.

    Cost: 1 round, ``8 * numel`` bytes per peer (local truncation or ``shift = 0``); dealer
    truncation adds a round of ``8 * numel``.
    Error: exact in the ring, plus the truncation's (below one unit of the result's scale).
    Security: semi-honest; ``a`` uniform, so ``eps`` is uniform.
    Reference: Beaver, CRYPTO'91 (the square-pair special case).
    """
    check_share(x, party, "square operand")
    if party.replicated:  # a replicated product opens nothing: no square pair to save bytes on
        return product("mul", x, x, party, shift=shift)
    method = resolve_method(party) if shift else "none"
    requests = [_square_request(tuple(x.shape))]
    if method == "dealer":
        requests.append(truncation_request(tuple(x.shape), shift))
    batch = party.dealer.request(requests)
    (a,) = batch.free(0)
    eps = x - a
    opened = open_shares([eps], party, tag="beaver.square")
    assert opened is not None
    a2 = batch.item(0)[1]  # before `a` is modified (DealerBatch contract)
    a += x
    z = a2.addcmul_(opened[0], a) if a2.is_contiguous() else a2 + opened[0] * a
    if method == "none":
        return z
    if method == "local":
        return truncate_local_(z, party, shift)
    return truncate_dealer(z, party, shift, batch, index=1)


def _square_request(shape: tuple[int, ...]) -> DealerRequest:
    return DealerRequest("square", {"shape": list(shape)})


def public_product(
    op: str,
    x: Tensor,
    y: Tensor,
    party: Party,
    op_params: Mapping[str, Any] | None = None,
    *,
    shift: int,
    public_first: bool = False,
) -> Tensor:
    """``[op(x, y) >> shift]`` (``op(y, x)`` with ``public_first``) for a public ring tensor ``y``.

    1. Every party applies ``op`` to its share and ``y`` (the op is linear in the share).
    2. Truncate by ``shift`` bits (none for ``shift = 0``).

    Cost: local, 0 rounds, unless ``shift > 0`` with ``dealer`` truncation (1 round,
    ``8 * numel(out)`` bytes per peer). Error: the truncation's. Security: as the truncation.
    """
    check_share(x, party, f"{op} operand")
    if op not in BILINEAR_OPS:
        raise ValueError(
            f"party {party.rank}: unknown bilinear op {op!r}; known: {sorted(BILINEAR_OPS)}"
        )
    if y.dtype != torch.int64:
        raise TypeError(
            f"party {party.rank}: {op}: the public operand must be an encoded int64 ring "
            f"tensor, got {y.dtype}"
        )
    if shift < 0:
        raise ValueError(f"party {party.rank}: product shift must be >= 0, got {shift}")
    a, b = (y, x) if public_first else (x, y)
    output_shape(op, tuple(a.shape), tuple(b.shape), party, op_params)
    z = BILINEAR_OPS[op](a, b, **(op_params or {}))
    return truncate(z, party, shift) if shift else z


def div_public(x: Tensor, value: Public, party: Party) -> Tensor:
    """``[x / v]`` for a public non-zero ``v`` (elementwise, broadcasting), at ``x``'s scale.

    A ring-level division: the quotient keeps the scale of ``x`` whatever it is, so the caller
    needs no fixed-point decision; ``v`` is a count or a real divisor, never encoded.

    1. ``v = ±2**e`` (a Python int): truncate by ``e`` bits (and negate).
    2. Otherwise multiply by ``w = round(2**s / v)`` with ``s = f + max(0, ceil(log2 max|v|))``
       and truncate by ``s`` bits: ``w`` keeps at least ``f + 1`` significant bits, so the
       quotient's relative error from rounding ``w`` is at most ``2**-(f+1)``, while ``[x] * w``
       stays within a factor 2 of a normal fixed-point product's magnitude.

    Cost: as one truncation (0 rounds local; 1 round, ``8 * numel`` bytes per peer, dealer).
    Error: at most ``|x / v| * 2**-(f+1) + 1`` ulp.

    Raises:
        ZeroDivisionError: ``v`` is (or contains) zero.
        EncodingError: ``1 / v`` cannot be encoded (``|v| < 2**(f - 62)``).
    """
    check_share(x, party, "div_public operand")
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 0:
            raise ZeroDivisionError(f"party {party.rank}: div_public by zero")
        mag = abs(value)
        if mag & (mag - 1) == 0:
            out = truncate(x, party, mag.bit_length() - 1) if mag > 1 else x.clone()
            return out.neg_() if value < 0 else out
    v = torch.as_tensor(value, dtype=torch.float64)
    if bool((v == 0).any()):
        raise ZeroDivisionError(f"party {party.rank}: div_public by zero")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"party {party.rank}: div_public by a non-finite value")
    largest = float(v.abs().max()) if v.numel() else 1.0
    s = party.frac_bits + max(0, math.ceil(math.log2(largest)))
    if s > 62:
        raise ValueError(f"party {party.rank}: div_public divisor {largest:g} is too large")
    w_real = torch.round(float(1 << s) / v)
    smallest = float(v.abs().min()) if v.numel() else 1.0
    if bool((w_real.abs() >= 2.0**62).any()):
        # The multiplier would not fit the ring (int64 conversion would wrap silently).
        raise EncodingError(
            f"party {party.rank}: div_public: 1 / {smallest:g} is out of the fixed-point range "
            f"(divisors below {2.0 ** (party.frac_bits - 62):.3g} in magnitude cannot be encoded)"
        )
    w = w_real.to(torch.int64)
    return truncate(x * w, party, s)
