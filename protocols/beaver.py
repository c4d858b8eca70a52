"""Layer L3: Beaver products for every bilinear op, and reusable masks for fixed operands.

One function, :func:`beaver`, multiplies two arithmetic sharings under any op ``op(x, y)`` that
is linear in each argument (:data:`crypten_lite.runtime.ring.BILINEAR_OPS`: elementwise ``mul`` with
broadcasting, batched ``matmul``, ``conv1d``/``conv2d``, ``conv_transpose1d``/``2d``, two-operand
``einsum``). The
result is at the sum of both inputs' scales (``2f`` for two fixed-point inputs); truncation is
the caller's step (:mod:`crypten_lite.protocols.truncation`,
:func:`crypten_lite.protocols.arithmetic.product`).

The online formula used everywhere here is ``[z] = [c] + op(eps, [b]) + op([x], delta)``; summed
over the parties it is ``op(a, b) + op(x - a, b) + op(x, y - b) = op(x, y)``. Compared with the
textbook ``c + eps*b + a*delta + eps*delta`` it costs one bilinear evaluation less on party 0
and has no party-dependent term.

A :class:`FixedOperand` (a weight used on many inputs) opens its masked value ``y - b`` once
(:func:`prepare_fixed`); each later product asks the dealer for a triple built on the same
stored mask ``b`` and opens only the other operand's mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from crypten_lite.protocols import replicated
from crypten_lite.protocols.opening import open_shares
from crypten_lite.runtime.dealer import DealerBatch, DealerRequest
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import BILINEAR_OPS, bilinear_output_shape

__all__ = [
    "FixedOperand",
    "beaver",
    "beaver_online",
    "beaver_request",
    "check_share",
    "material_parts",
    "output_shape",
    "prepare_fixed",
]

Tensor = torch.Tensor


@dataclass(eq=False)
class FixedOperand:
    """A sharing whose Beaver mask has been opened once, for products with many other operands.

    Attributes:
        share: this party's share ``[y]`` (int64), unchanged.
        mask: this party's share ``[b]`` of the stored uniform mask.
        masked_pub: the opened ``delta = y - b`` (public, identical on every party).
        handle: the dealer's name for ``b`` (the same on every party).
    """

    share: Tensor
    mask: Tensor
    masked_pub: Tensor
    handle: int

    @property
    def shape(self) -> torch.Size:
        return self.share.shape

    def __repr__(self) -> str:
        return f"FixedOperand(shape={tuple(self.share.shape)}, handle={self.handle})"

    def release(self, party: Party) -> None:
        """Let the dealer forget the mask (no round of its own). The operand is unusable after."""
        party.dealer.release_fixed(self.handle)


def check_share(t: Any, party: Party, name: str) -> None:
    """Raise a clear error unless ``t`` is an int64 share tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(
            f"party {party.rank}: {name} must be an int64 share tensor, got {type(t).__name__}"
        )
    if t.dtype != torch.int64:
        raise TypeError(f"party {party.rank}: {name} must be an int64 share tensor, got {t.dtype}")


def output_shape(
    op: str,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    party: Party,
    op_params: Mapping[str, Any] | None = None,
) -> tuple[int, ...]:
    """Shape of ``op(a, b)`` (cached); a clear ``ValueError`` naming the party if they do not fit."""
    if op not in BILINEAR_OPS:
        raise ValueError(
            f"party {party.rank}: unknown bilinear op {op!r}; known: {sorted(BILINEAR_OPS)}"
        )
    try:
        return bilinear_output_shape(op, a_shape, b_shape, op_params)
    except (RuntimeError, ValueError, TypeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"party {party.rank}: {op} cannot combine shapes {tuple(a_shape)} and "
            f"{tuple(b_shape)}" + (f" with {dict(op_params)}" if op_params else "") + f": {detail}"
        ) from None


def prepare_fixed(y: Tensor, party: Party, *, tag: str | None = None) -> FixedOperand:
    """Open a fixed operand's masked value once, for any number of later Beaver products.

    1. Take a uniform ``[b]`` from the dealer, which keeps ``b`` under a handle (``fixed_mask``).
    2. Open ``delta = [y] - [b]``.

    Cost: 1 round; each party sends ``8 * numel(y)`` bytes to each peer (plus, with a dealer
    process, one request from party 0 and an empty reply).
    Security: semi-honest; ``b`` uniform and used for this ``y`` only, so ``delta`` is uniform.
    Every later product with this operand draws a fresh mask for the other side, so reusing
    ``b`` reveals nothing more (the masked matrix reuse of SecureML §4.2).
    Reference: Beaver, CRYPTO'91; Mohassel and Zhang, SecureML, IEEE S&P'17, §4.2.
    """
    check_share(y, party, "fixed operand")
    if party.replicated:
        # Replicated family: no mask to open; what a product reuses is the companion, fetched
        # once here if missing (the returned share is then the re-randomised one).
        ((share, _),) = replicated.with_companions([y], party, tag=tag or "beaver.fixed")
        empty = torch.empty(0, dtype=torch.int64)
        return FixedOperand(share=share, mask=empty, masked_pub=empty, handle=-1)
    handle, b = party.dealer.fixed_mask(tuple(y.shape))
    opened = open_shares([y - b], party, tag=tag or "beaver.fixed")
    assert opened is not None
    return FixedOperand(share=y, mask=b, masked_pub=opened[0], handle=handle)


def beaver_request(
    op: str,
    x: Tensor | FixedOperand,
    y: Tensor | FixedOperand,
    party: Party,
    op_params: Mapping[str, Any] | None = None,
) -> DealerRequest:
    """Validate the operands and build the dealer request for their product.

    Lets a caller batch the triple with other correlated randomness (a truncation pair) in one
    :meth:`~crypten_lite.runtime.dealer.Dealer.request`, then finish with :func:`beaver_online`.
    """
    fixed_x, fixed_y = isinstance(x, FixedOperand), isinstance(y, FixedOperand)
    if fixed_x and fixed_y:
        raise ValueError(f"party {party.rank}: at most one operand of a product can be fixed")
    x_share = x.share if isinstance(x, FixedOperand) else x
    y_share = y.share if isinstance(y, FixedOperand) else y
    check_share(x_share, party, f"left operand of {op}")
    check_share(y_share, party, f"right operand of {op}")
    a_shape, b_shape = tuple(x_share.shape), tuple(y_share.shape)
    output_shape(op, a_shape, b_shape, party, op_params)
    params = {} if not op_params else dict(op_params)
    if fixed_x or fixed_y:
        handle = x.handle if isinstance(x, FixedOperand) else y.handle  # type: ignore[union-attr]
        return party.dealer.fixed_triple_request(
            op, a_shape, b_shape, handle, fixed="a" if fixed_x else "b", op_params=params
        )
    return DealerRequest(
        "triple",
        {"op": op, "a_shape": list(a_shape), "b_shape": list(b_shape), "op_params": params},
    )


def material_parts(
    material: DealerBatch | Sequence[Tensor], index: int, n_free: int
) -> tuple[list[Tensor], Callable[[], list[Tensor]]]:
    """(free components now, a function returning the derived ones) of one dealer item.

    With a :class:`~crypten_lite.runtime.dealer.DealerBatch` the derived components may still be on
    their way from the dealer process; call the function only after this party's round.
    """
    if isinstance(material, DealerBatch):
        return material.free(index), lambda: material.item(index)[n_free:]
    items = list(material)
    return items[:n_free], lambda: items[n_free:]


def beaver_online(
    op: str,
    x: Tensor | FixedOperand,
    y: Tensor | FixedOperand,
    material: DealerBatch | Sequence[Tensor],
    party: Party,
    *,
    op_params: Mapping[str, Any] | None = None,
    tag: str | None = None,
    index: int = 0,
) -> Tensor:
    """The online phase of :func:`beaver`, given the dealer material of :func:`beaver_request`.

    ``material`` is item ``index`` of a :class:`~crypten_lite.runtime.dealer.DealerBatch` (the triple
    ``c`` is collected only after the opening, so a dealer process's round trip overlaps with
    it), or the item's tensors: ``[a], [b], [c]`` for a plain triple, ``[a], [c]``
    (``[b], [c]``) when ``y`` (``x``) is a :class:`FixedOperand`. Its tensors are consumed
    (overwritten) — the free ones only after the opening, as
    :class:`~crypten_lite.runtime.dealer.DealerBatch` requires.
    """
    tag = tag or f"beaver.{op}"
    if party.replicated:
        # The dealer material is a placeholder (crypten_lite.runtime.party.NoDealer). The caller
        # truncates next (arithmetic.bilinear), and the truncation's opening replaces the
        # resharing, so the product stays additive here.
        return _replicated(op, x, y, party, op_params, tag, with_companion=False)
    if isinstance(y, FixedOperand):
        (a,), derived = material_parts(material, index, 1)
        eps = x - a  # type: ignore[operator]
        opened = open_shares([eps], party, tag=tag)
        assert opened is not None
        eps_pub, delta_pub, b = opened[0], y.masked_pub, y.mask
        x_share = x
    elif isinstance(x, FixedOperand):
        (b,), derived = material_parts(material, index, 1)
        delta = y - b
        opened = open_shares([delta], party, tag=tag)
        assert opened is not None
        eps_pub, delta_pub, a = x.masked_pub, opened[0], x.mask
        # sum_i [c] + op(eps, [y]) + op([a], delta)
        #   = op(a, b) + op(x - a, y) + op(a, y - b) = op(x, y).
        (c,) = derived()
        return _accumulate(op, c, eps_pub, y, a, delta_pub, op_params)
    else:
        (a, b), derived = material_parts(material, index, 2)
        # eps and delta go into one buffer, so they leave in one message per peer.
        na = a.numel()
        flat = torch.empty(na + b.numel(), dtype=torch.int64)
        torch.sub(x, a, out=flat[:na].view(a.shape))
        torch.sub(y, b, out=flat[na:].view(b.shape))
        opened = open_shares([flat], party, tag=tag)
        assert opened is not None
        eps_pub = opened[0][:na].view(a.shape)
        delta_pub = opened[0][na:].view(b.shape)
        x_share = x
    (c,) = derived()
    return _accumulate(op, c, eps_pub, b, x_share, delta_pub, op_params)  # type: ignore[arg-type]


def _accumulate(
    op: str,
    c: Tensor,
    p1: Tensor,
    s1: Tensor,
    s2: Tensor,
    p2: Tensor,
    op_params: Mapping[str, Any] | None,
) -> Tensor:
    """``c + op(p1, s1) + op(s2, p2)``, accumulated into ``c`` (a fresh dealer tensor)."""
    if op == "mul":
        if c.is_contiguous():
            c.addcmul_(p1, s1)
            c.addcmul_(s2, p2)
            return c
        return c + p1 * s1 + s2 * p2
    if op == "matmul" and c.dim() == 2 and p1.dim() == 2 and s2.dim() == 2 and c.is_contiguous():
        c.addmm_(p1, s1)
        c.addmm_(s2, p2)
        return c
    fn = BILINEAR_OPS[op]
    params = op_params or {}
    z = fn(p1, s1, **params)
    z += fn(s2, p2, **params)
    z += c
    return z


def beaver(
    op: str,
    x: Tensor | FixedOperand,
    y: Tensor | FixedOperand,
    party: Party,
    *,
    op_params: Mapping[str, Any] | None = None,
    tag: str | None = None,
) -> Tensor:
    """Multiply two sharings under a bilinear op with a Beaver triple: ``[op(x, y)]``.

    1. Take ``[a], [b], [c = op(a, b)]`` from the dealer (shapes of ``x`` and ``y``).
    2. Open ``eps = [x] - [a]`` and ``delta = [y] - [b]`` together: one message per peer.
    3. Return ``[c] + op(eps, [b]) + op([x], delta)``; the sum over the parties is
       ``op(a, b) + op(x - a, b) + op(x, y - b) = op(x, y)`` (no party-dependent term).

    With a :class:`FixedOperand` on one side, its ``delta`` (or ``eps``) is the one opened by
    :func:`prepare_fixed`, the dealer builds ``c`` on the stored mask, and step 2 opens only the
    other operand's masked value.

    Args:
        op: a name in :data:`crypten_lite.runtime.ring.BILINEAR_OPS`.
        x, y: int64 shares (any shapes ``op`` accepts, broadcasting included), or at most one
            :class:`FixedOperand`.
        op_params: keyword arguments of the op (``stride``, ``padding``, ...), JSON-serialisable.
        tag: op tag on the wire (default ``beaver.<op>``).

    Returns:
        This party's int64 share of ``op(x, y)``, at the sum of the input scales (no truncation).

    Under the replicated family (``party.replicated``: 3 parties, no dealer) the product is
    :func:`crypten_lite.protocols.replicated.product` instead: local cross terms and one
    resharing round of ``8 * numel(out)`` bytes per party, the result's companion recorded.

    Cost: 1 round; each party sends ``8 * (numel(x) + numel(y))`` bytes to each of the ``N - 1``
    peers (only the non-fixed operand with a :class:`FixedOperand`). With a dealer process,
    party 0 also sends one request and receives ``8 * numel(op(x, y))`` bytes; the request
    leaves before step 2 and the reply is collected after it, so the dealer's round trip
    overlaps with the opening instead of adding a round of latency.
    Security: semi-honest, any ``N - 1`` colluding parties; ``a`` and ``b`` are uniform and
    unknown to every coalition short of all parties (or to party 0 alone with the insecure
    trusted-first-party dealer), so ``eps`` and ``delta`` are uniform. The dealer must not
    collude with a party.
    Reference: Beaver, "Efficient multiparty protocols using circuit randomization", CRYPTO'91;
    matrix triples as in Mohassel and Zhang, SecureML, IEEE S&P'17, §4.1.

    Raises:
        TypeError: an operand is not an int64 tensor (message names the party).
        ValueError: unknown op, or shapes that do not fit the op (message names the party).
    """
    if party.replicated:
        return _replicated(op, x, y, party, op_params, tag or f"rep.{op}", with_companion=True)
    request = beaver_request(op, x, y, party, op_params)
    batch = party.dealer.request([request])
    return beaver_online(op, x, y, batch, party, op_params=op_params, tag=tag)


def _replicated(
    op: str,
    x: Tensor | FixedOperand,
    y: Tensor | FixedOperand,
    party: Party,
    op_params: Mapping[str, Any] | None,
    tag: str,
    *,
    with_companion: bool,
) -> Tensor:
    """The replicated family's branch of :func:`beaver` and :func:`beaver_online`."""
    x_share = x.share if isinstance(x, FixedOperand) else x
    y_share = y.share if isinstance(y, FixedOperand) else y
    check_share(x_share, party, f"left operand of {op}")
    check_share(y_share, party, f"right operand of {op}")
    output_shape(op, tuple(x_share.shape), tuple(y_share.shape), party, op_params)
    return replicated.product(
        op, x_share, y_share, party, op_params, tag=tag, with_companion=with_companion
    )
