"""Layer L3: fixed-point arithmetic on arithmetic sharings (raw int64 share tensors).

Every function takes and returns this party's int64 share; values are at scale ``2**f``
(``f = party.frac_bits``) unless stated. Public operands are real numbers (Python floats or
floating tensors, encoded here) or integers (Python ints or integer tensors, used as they are:
no scaling, no truncation).

Free operations, not wrapped here: every *shape* op applies to a share exactly as to the value,
because the value is the sum of the shares and these ops move or copy elements without
combining them — ``reshape``, ``view``, ``flatten``, ``permute``/``transpose``, ``squeeze``,
``unsqueeze``, ``expand``, indexing and slicing, ``cat``/``stack``, ``split``/``chunk``,
``flip``, ``roll``, ``gather``, ``pad`` with zeros. Call plain torch on the share tensor (padding
with a non-zero public constant must add it on one party only: use :func:`add_public`).
Likewise sums of shares are shares of sums (:func:`add`, :func:`sum`, :func:`cumsum`).

Error bounds use ulp = ``2**-f``. A product of fixed-point values ``x, y`` carries the encoding
errors (at most ``|x| + |y|`` half-ulps, to first order) plus one ulp from truncation; see
:mod:`crypten_lite.protocols.truncation` for the truncation methods and their failure
probability (``local``, 2 parties) or range (``dealer``, ``|x * y| < 2**(62 - 2f)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from crypten_lite.dealer import DealerRequest
from crypten_lite.encoding import encode
from crypten_lite.errors import EncodingError
from crypten_lite.party import Party
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
from crypten_lite.ring import BILINEAR_OPS

__all__ = [
    "add",
    "add_public",
    "bilinear",
    "bilinear_public",
    "conv1d",
    "conv2d",
    "conv_transpose1d",
    "conv_transpose2d",
    "cumsum",
    "div_public",
    "dot",
    "einsum",
    "matmul",
    "matmul_public",
    "mean",
    "mul",
    "mul_public",
    "neg",
    "outer",
    "square",
    "sub",
    "sub_public",
    "sum",
]

Tensor = torch.Tensor
Public = Tensor | float | int
Operand = Tensor | FixedOperand


# --------------------------------------------------------------------------- linear, local
def add(x: Tensor, y: Tensor) -> Tensor:
    """``[x + y] = [x] + [y]``. Cost: local, 0 rounds. Security: no messages."""
    return x + y


def sub(x: Tensor, y: Tensor) -> Tensor:
    """``[x - y] = [x] - [y]``. Cost: local, 0 rounds. Security: no messages."""
    return x - y


def neg(x: Tensor) -> Tensor:
    """``[-x] = -[x]``. Cost: local, 0 rounds. Security: no messages."""
    return -x


def sum(x: Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False) -> Tensor:  # noqa: A001
    """``[sum(x)]``: the sum of the shares (int64 sums wrap mod 2**64, exactly). Local."""
    return x.sum() if dim is None else x.sum(dim, keepdim=keepdim)


def cumsum(x: Tensor, dim: int) -> Tensor:
    """``[cumsum(x, dim)]``, exact and local."""
    return x.cumsum(dim)


def _is_integer(value: Public) -> bool:
    if isinstance(value, Tensor):
        return not value.is_floating_point() and not value.is_complex()
    return isinstance(value, int)  # bool is an int


def _public_ring(value: Public, party: Party, what: str) -> Tensor:
    if isinstance(value, Tensor) and value.is_complex():
        raise TypeError(f"party {party.rank}: {what} cannot take a complex public value")
    return encode(value, party.frac_bits)


def add_public(x: Tensor, value: Public, party: Party) -> Tensor:
    """``[x + v]`` for a public real ``v`` (encoded with ``f`` bits; integers too).

    1. Party 0 returns ``[x] + encode(v)``; the others return their share (broadcast to the
       result shape).

    Cost: local, 0 rounds. Error: the encoding of ``v``, at most half an ulp.
    Security: no messages.
    """
    check_share(x, party, "add_public operand")
    v = _public_ring(value, party, "add_public")
    if party.rank == 0:
        return x + v
    if v.dim() == 0 or v.shape == x.shape:
        return x.clone()
    shape = torch.broadcast_shapes(x.shape, v.shape)  # type: ignore[no-untyped-call]
    return x.expand(shape).clone()


def sub_public(x: Tensor, value: Public, party: Party) -> Tensor:
    """``[x - v]`` for a public ``v``: :func:`add_public` of ``-v``."""
    return add_public(x, -value, party)


def mul_public(x: Tensor, value: Public, party: Party) -> Tensor:
    """``[x * v]`` for a public ``v`` (elementwise, broadcasting).

    1. A real ``v`` (float, floating tensor): ``[x] * encode(v)`` locally, then truncate by
       ``f`` bits. An integer ``v`` (int, integer or bool tensor): ``[x] * v``, exact.

    Cost: 0 rounds for an integer ``v`` or with ``local`` truncation; 1 round and
    ``8 * numel`` bytes per peer with ``dealer`` truncation.
    Error: integer ``v`` exact; real ``v``: ``|x|`` half-ulps from encoding ``v`` plus one ulp
    from truncation.
    Security: as the truncation used.
    """
    check_share(x, party, "mul_public operand")
    if _is_integer(value):
        return x * (value if isinstance(value, Tensor) else int(value))
    return truncate(x * _public_ring(value, party, "mul_public"), party)


def div_public(x: Tensor, value: Public, party: Party) -> Tensor:
    """``[x / v]`` for a public non-zero ``v`` (elementwise, broadcasting).

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


def mean(
    x: Tensor, party: Party, dim: int | tuple[int, ...] | None = None, keepdim: bool = False
) -> Tensor:
    """``[mean(x)]``: the local sum, then :func:`div_public` by the element count."""
    total = sum(x, dim, keepdim)
    count = x.numel() // max(1, total.numel()) if x.numel() else 1
    return div_public(total, int(count), party)


# --------------------------------------------------------------------------- products
def bilinear(
    op: str,
    x: Operand,
    y: Operand,
    party: Party,
    op_params: Mapping[str, Any] | None = None,
    *,
    tag: str | None = None,
) -> Tensor:
    """Fixed-point ``[op(x, y)]``: a Beaver product, then truncation by ``f`` bits.

    1. Fetch the triple (and, for ``dealer`` truncation, the truncation pair in the same
       dealer request).
    2. :func:`~crypten_lite.protocols.beaver.beaver_online`: open ``eps``, ``delta``.
    3. Truncate the scale-``2f`` result by ``f`` bits.

    Cost: ``dealer`` truncation (the default, any N): 2 rounds, ``8 * (numel(x) + numel(y) +
    numel(out))`` bytes per peer. Opt-in ``local`` truncation (2 parties): 1 round,
    ``8 * (numel(x) + numel(y))`` bytes per peer. A
    :class:`~crypten_lite.protocols.beaver.FixedOperand` side sends nothing.
    Error: truncation (< 1 ulp; ``local``: fails with probability ``|op(x, y)| * 2**(2f-64)``
    per element) plus the inputs' encoding errors carried through ``op``: for ``mul`` at most
    ``(|x| + |y|) / 2 + 1`` ulps; for a sum of ``k`` products, ``k`` times that.
    Security: semi-honest, any ``N - 1`` colluding parties; as Beaver and truncation.
    Reference: Beaver, CRYPTO'91; Mohassel and Zhang, SecureML, IEEE S&P'17.
    """
    method = resolve_method(party)
    request = beaver_request(op, x, y, party, op_params)
    f = party.frac_bits
    if method == "local":
        batch = party.dealer.request([request])
        z = beaver_online(op, x, y, batch, party, op_params=op_params, tag=tag)
        return truncate_local_(z, party, f)  # z is a fresh tensor of ours
    out = output_shape(op, tuple(x.shape), tuple(y.shape), party, op_params)
    batch = party.dealer.request([request, truncation_request(out, f)])
    z = beaver_online(op, x, y, batch, party, op_params=op_params, tag=tag)
    return truncate_dealer(z, party, f, batch, index=1)


def mul(x: Operand, y: Operand, party: Party) -> Tensor:
    """Elementwise fixed-point ``[x * y]`` with broadcasting: :func:`bilinear` of ``mul``.

    Cost: 2 rounds, ``8 * (numel(x) + numel(y) + numel(out))`` bytes to each peer with the
    default (exact, dealer) truncation; opt-in 2-party local truncation: 1 round, 16 B per
    element.
    """
    return bilinear("mul", x, y, party)


def matmul(x: Operand, y: Operand, party: Party) -> Tensor:
    """Fixed-point ``[x @ y]`` (``torch.matmul`` semantics: batched, broadcasting).

    Cost: 1 round, ``8 * (numel(x) + numel(y))`` bytes per peer — ``8(nk + km)`` for
    ``(n×k) @ (k×m)`` — plus a truncation round of ``8nm`` with dealer truncation.
    """
    return bilinear("matmul", x, y, party)


def dot(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[<x, y>]`` of two 1-D sharings (a 0-d share). Cost: 1 round, ``16 * n`` bytes per peer."""
    if x.dim() != 1 or y.dim() != 1:
        raise ValueError(
            f"party {party.rank}: dot takes 1-D operands, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return bilinear("matmul", x, y, party)


def outer(x: Tensor, y: Tensor, party: Party) -> Tensor:
    """``[x y^T]`` of two 1-D sharings. Cost: 1 round, ``8 * (n + m)`` bytes per peer."""
    if x.dim() != 1 or y.dim() != 1:
        raise ValueError(
            f"party {party.rank}: outer takes 1-D operands, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    return bilinear("mul", x.reshape(-1, 1), y.reshape(1, -1), party)


def conv1d(
    x: Operand,
    w: Operand,
    party: Party,
    stride: int | tuple[int] = 1,
    padding: int | str | tuple[int] = 0,
    dilation: int | tuple[int] = 1,
    groups: int = 1,
) -> Tensor:
    """Fixed-point ``[conv1d(x, w)]`` (no bias: add it with :func:`add`). Cost as :func:`bilinear`."""
    params = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return bilinear("conv1d", x, w, party, params)


def conv2d(
    x: Operand,
    w: Operand,
    party: Party,
    stride: int | tuple[int, int] = 1,
    padding: int | str | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """Fixed-point ``[conv2d(x, w)]`` (no bias: add it with :func:`add`).

    Cost: 1 round, ``8 * (numel(x) + numel(w))`` bytes per peer (only ``numel(x)`` when ``w``
    is a :class:`~crypten_lite.protocols.beaver.FixedOperand`); see :func:`bilinear`.
    """
    params = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return bilinear("conv2d", x, w, party, params)


def conv_transpose1d(
    x: Operand,
    w: Operand,
    party: Party,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] = 0,
    output_padding: int | tuple[int] = 0,
    groups: int = 1,
    dilation: int | tuple[int] = 1,
) -> Tensor:
    """Fixed-point ``[conv_transpose1d(x, w)]``. Cost as :func:`bilinear`."""
    params = {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "groups": groups,
        "dilation": dilation,
    }
    return bilinear("conv_transpose1d", x, w, party, params)


def conv_transpose2d(
    x: Operand,
    w: Operand,
    party: Party,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """Fixed-point ``[conv_transpose2d(x, w)]``. Cost as :func:`bilinear`."""
    params = {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "groups": groups,
        "dilation": dilation,
    }
    return bilinear("conv_transpose2d", x, w, party, params)


def einsum(equation: str, x: Operand, y: Operand, party: Party) -> Tensor:
    """Fixed-point ``[einsum(equation, x, y)]`` for a two-operand equation (each operand used
    once, so the op is bilinear), e.g. ``"bij,bjk->bik"``. Cost as :func:`bilinear`."""
    return bilinear("einsum", x, y, party, {"equation": equation})


def square(x: Tensor, party: Party) -> Tensor:
    """Fixed-point ``[x * x]`` with a square pair: opens one tensor instead of two.

    1. Take ``[a], [a*a]`` from the dealer (with the truncation pair for ``dealer``
       truncation).
    2. Open ``eps = [x] - [a]``.
    3. ``[z] = [a*a] + eps * ([x] + [a])``; summed: ``a² + (x - a)(x + a) = x²``.
    4. Truncate by ``f`` bits.

    Cost: 1 round, ``8 * numel`` bytes per peer (local truncation); dealer truncation adds a
    round of ``8 * numel``.
    Error: at most ``|x| + 1`` ulps (encoding error carried, plus truncation).
    Security: semi-honest; ``a`` uniform, so ``eps`` is uniform.
    Reference: Beaver, CRYPTO'91 (the square-pair special case).
    """
    check_share(x, party, "square operand")
    method = resolve_method(party)
    f = party.frac_bits
    requests = [_square_request(tuple(x.shape))]
    if method == "dealer":
        requests.append(truncation_request(tuple(x.shape), f))
    batch = party.dealer.request(requests)
    (a,) = batch.free(0)
    eps = x - a
    opened = open_shares([eps], party, tag="beaver.square")
    assert opened is not None
    a2 = batch.item(0)[1]  # before `a` is modified (DealerBatch contract)
    a += x
    z = a2.addcmul_(opened[0], a) if a2.is_contiguous() else a2 + opened[0] * a
    if method == "local":
        return truncate_local_(z, party, f)
    return truncate_dealer(z, party, f, batch, index=1)


def _square_request(shape: tuple[int, ...]) -> DealerRequest:
    return DealerRequest("square", {"shape": list(shape)})


# --------------------------------------------------------------------------- public operands
def bilinear_public(
    op: str,
    x: Tensor,
    y_pub: Public,
    party: Party,
    op_params: Mapping[str, Any] | None = None,
    public_first: bool = False,
) -> Tensor:
    """``[op(x, y)]`` (or ``[op(y, x)]`` with ``public_first``) for a public ``y``: local.

    1. A real ``y`` is encoded with ``f`` bits; every party applies ``op`` to its share and
       the public operand (the op is linear in the share).
    2. Truncate by ``f`` bits (not for an integer ``y``, which is used unscaled).

    Cost: 0 rounds with local truncation or an integer ``y``; else one truncation round.
    Error: one ulp from truncation plus ``y``'s encoding error carried through ``op``.
    Security: as the truncation.
    """
    check_share(x, party, f"{op} operand")
    if op not in BILINEAR_OPS:
        raise ValueError(
            f"party {party.rank}: unknown bilinear op {op!r}; known: {sorted(BILINEAR_OPS)}"
        )
    integer = _is_integer(y_pub)
    y = torch.as_tensor(y_pub) if integer else _public_ring(y_pub, party, op)
    if integer:
        y = y.to(torch.int64)
    a, b = (y, x) if public_first else (x, y)
    output_shape(op, tuple(a.shape), tuple(b.shape), party, op_params)
    z = BILINEAR_OPS[op](a, b, **(op_params or {}))
    return z if integer else truncate(z, party)


def matmul_public(x: Tensor, w: Public, party: Party, *, left: bool = False) -> Tensor:
    """``[x @ w]`` (``[w @ x]`` with ``left``) for a public ``w``: :func:`bilinear_public`."""
    return bilinear_public("matmul", x, w, party, public_first=left)
