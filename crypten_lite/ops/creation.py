"""Layer L4: creation, copies, dtype casts, random fills and in-place fills of encrypted tensors.

Factory ops that take an encrypted tensor only for its shape (``zeros_like``, ``new_ones``, the
seed gradient ``ones_like(loss)`` of ``backward()``) make *public* encrypted tensors: every party
knows the value, so later products with them are local. Random fills (``bernoulli_`` for
dropout, ``uniform_``, ``normal_``) draw from a generator every party seeds identically (the
seed is opened once per party object), so the mask is public and the same on every party — it
depends on no secret.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from crypten_lite.ops._common import find_party, public_of, unsupported, wrap
from crypten_lite.ops._fixed import assign, float_dtype, mul_values, ring_of, wrap_public
from crypten_lite.protocols.opening import open_shares
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, implements

aten = torch.ops.aten

__all__ = ["common_generator"]


def _shape(size: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in size)


def _dtype_of(x: MPCTensor, dtype: torch.dtype | None) -> torch.dtype:
    return x.dtype if dtype is None else float_dtype(dtype)


def _public(value: torch.Tensor, party: Party, dtype: torch.dtype) -> MPCTensor:
    return wrap_public(value.to(dtype), party, dtype)


@implements(aten.zeros_like.default, aten.empty_like.default)
def zeros_like(x: MPCTensor, *, dtype: torch.dtype | None = None, **_: Any) -> MPCTensor:
    """A public zero tensor of ``x``'s shape (``empty_like`` too: never uninitialised shares)."""
    dt = _dtype_of(x, dtype)
    return _public(torch.zeros(x.shape), x.party, dt)


@implements(aten.ones_like.default)
def ones_like(x: MPCTensor, *, dtype: torch.dtype | None = None, **_: Any) -> MPCTensor:
    dt = _dtype_of(x, dtype)
    return _public(torch.ones(x.shape), x.party, dt)


@implements(aten.full_like.default)
def full_like(
    x: MPCTensor, fill_value: Any, *, dtype: torch.dtype | None = None, **_: Any
) -> MPCTensor:
    dt = _dtype_of(x, dtype)
    return _public(torch.full(x.shape, float(fill_value)), x.party, dt)


@implements(aten.new_zeros.default, aten.new_empty.default)
def new_zeros(x: MPCTensor, size: Any, *, dtype: torch.dtype | None = None, **_: Any) -> MPCTensor:
    return _public(torch.zeros(_shape(size)), x.party, _dtype_of(x, dtype))


@implements(aten.new_empty_strided.default)
def new_empty_strided(
    x: MPCTensor, size: Any, stride: Any, *, dtype: torch.dtype | None = None, **_: Any
) -> MPCTensor:
    """A public zero tensor with the given strides (autograd accumulates gradients into it)."""
    dt = _dtype_of(x, dtype)
    share = torch.empty_strided(_shape(size), _shape(stride), dtype=torch.int64).zero_()
    return MPCTensor(share, x.party, dtype=dt, public=torch.zeros(_shape(size), dtype=dt))


@implements(aten.new_ones.default)
def new_ones(x: MPCTensor, size: Any, *, dtype: torch.dtype | None = None, **_: Any) -> MPCTensor:
    return _public(torch.ones(_shape(size)), x.party, _dtype_of(x, dtype))


@implements(aten.new_full.default)
def new_full(
    x: MPCTensor, size: Any, fill_value: Any, *, dtype: torch.dtype | None = None, **_: Any
) -> MPCTensor:
    return _public(torch.full(_shape(size), float(fill_value)), x.party, _dtype_of(x, dtype))


@implements(aten.zero_.default)
def zero_(x: MPCTensor) -> Any:
    return assign(x, torch.zeros((), dtype=x.dtype))


@implements(aten.fill_.Scalar, aten.fill_.Tensor)
def fill_(x: MPCTensor, value: Any) -> Any:
    """Fill with a public scalar, or with an encrypted 0-d tensor (broadcast share-wise)."""
    return assign(x, value)


# --------------------------------------------------------------------------- copies


@implements(aten.detach.default, aten.alias.default, aten.lift_fresh.default)
def detach(x: MPCTensor) -> MPCTensor:
    """Same share buffer, same public value and stash (autograd saves outputs through this)."""
    out = MPCTensor(x._share, x.party, dtype=x.dtype, alias=x._alias, public=x._pub)
    out._pub_version = x._pub_version
    out._stash = x._stash
    out._stash_version = x._stash_version
    return out


@implements(aten.clone.default)
def clone(x: MPCTensor, *, memory_format: torch.memory_format | None = None) -> MPCTensor:
    fmt = torch.preserve_format if memory_format is None else memory_format
    return wrap(x._share.clone(memory_format=fmt), x.party, dtype=x.dtype, public=x.public_value())


@implements(aten.copy_.default)
def copy_(dst: Any, src: Any, non_blocking: bool = False) -> Any:
    """``dst.copy_(src)``: an encrypted ``dst`` takes ``src``'s value (public or secret)."""
    return assign(dst, src)


def _check_to_copy(x: MPCTensor, *, dtype: torch.dtype | None = None, **_: Any) -> str | None:
    target = _dtype_of(x, dtype)
    if x.public_value() is None and x.dtype == torch.float32 and target != torch.float32:
        return f"casting an encrypted float tensor to {dtype} (needs a secure floor)"
    return None


@implements(aten._to_copy.default, check=_check_to_copy)
def to_copy(
    x: MPCTensor,
    *,
    dtype: torch.dtype | None = None,
    device: Any = None,
    memory_format: torch.memory_format | None = None,
    **_: Any,
) -> MPCTensor:
    """``.to()``/``.float()``/``.long()``: copies; integer to float is an exact left shift.

    Float to integer would need a secure floor (a truncation), so it is refused.
    """
    party = x.party
    if device is not None and torch.device(device).type != "cpu":
        raise unsupported(f"encrypted tensors live on the CPU; cannot move to {device}", party)
    target = _dtype_of(x, dtype)
    public = x.public_value()
    if target == x.dtype:
        share = x._share.clone()
        return wrap(share, party, dtype=target, public=public)
    if target == torch.float32:
        return wrap(
            ring_of(x, party, party.frac_bits).clone(),
            party,
            public=None if public is None else public.to(torch.float32),
        )
    if public is not None:
        return wrap_public(public.to(dtype or target), party, target)
    if x.dtype == torch.bool and target == torch.int64:
        return wrap(x._share.clone(), party, dtype=torch.int64)
    raise unsupported(
        f"casting an encrypted {x.dtype} tensor to {dtype} needs a secure floor or comparison; "
        "use torch.floor-free arithmetic or compare explicitly",
        party,
    )


# --------------------------------------------------------------------------- public randomness

_GENERATORS: weakref.WeakKeyDictionary[Party, torch.Generator] = weakref.WeakKeyDictionary()


def common_generator(party: Party) -> torch.Generator:
    """A torch generator seeded identically on every party (for public random masks).

    The first call opens the sum of one random word from each party (1 round, 8 bytes per
    peer); no party can choose the seed alone. Masks drawn from it are public: use it only for
    randomness that need not be secret (dropout masks, initialisation of public tensors).
    """
    gen = _GENERATORS.get(party)
    if gen is None:
        contribution = party.local_prg.random_int64((1,))
        opened = open_shares([contribution], party, tag="common_seed")
        assert opened is not None
        seed_pub = int(opened[0].item()) & ((1 << 63) - 1)
        gen = torch.Generator().manual_seed(seed_pub)
        _GENERATORS[party] = gen
    return gen


@implements(aten.bernoulli_.float, public_fast=False)
def bernoulli_(x: MPCTensor, p: float = 0.5, *, generator: Any = None) -> Any:
    """Fill with public Bernoulli(p) draws from :func:`common_generator` (dropout's mask)."""
    gen = common_generator(x.party)
    mask = torch.empty(x.shape).bernoulli_(p, generator=gen)
    return assign(x, mask.to(x.dtype))


@implements(aten.uniform_.default, public_fast=False)
def uniform_(x: MPCTensor, a: float = 0.0, b: float = 1.0, *, generator: Any = None) -> Any:
    gen = common_generator(x.party)
    return assign(x, torch.empty(x.shape).uniform_(a, b, generator=gen))


@implements(aten.normal_.default, public_fast=False)
def normal_(x: MPCTensor, mean: float = 0.0, std: float = 1.0, *, generator: Any = None) -> Any:
    gen = common_generator(x.party)
    return assign(x, torch.empty(x.shape).normal_(mean, std, generator=gen))


@implements(aten.bernoulli.p, public_fast=False)
def bernoulli(x: MPCTensor, p: float = 0.5, *, generator: Any = None) -> MPCTensor:
    gen = common_generator(x.party)
    return wrap_public(torch.empty(x.shape).bernoulli_(p, generator=gen), x.party, x.dtype)


@implements(aten.rand_like.default, public_fast=False)
def rand_like(x: MPCTensor, *, dtype: torch.dtype | None = None, **_: Any) -> MPCTensor:
    gen = common_generator(x.party)
    return wrap_public(torch.rand(x.shape, generator=gen), x.party, _dtype_of(x, dtype))


@implements(aten.randn_like.default, public_fast=False)
def randn_like(x: MPCTensor, *, dtype: torch.dtype | None = None, **_: Any) -> MPCTensor:
    gen = common_generator(x.party)
    return wrap_public(torch.randn(x.shape, generator=gen), x.party, _dtype_of(x, dtype))


@implements(aten.native_dropout.default, public_fast=False)
def native_dropout(x: MPCTensor, p: float, train: bool | None) -> tuple[Any, Any]:
    """Dropout with a public mask from :func:`common_generator`: ``x * mask / (1 - p)``
    (local, one truncation). Returns the output and the public boolean mask."""
    party = x.party
    if not train or p == 0.0:
        keep = torch.ones(x.shape, dtype=torch.bool)
        return clone(x), wrap_public(keep, party, torch.bool)
    keep = torch.empty(x.shape).bernoulli_(1.0 - p, generator=common_generator(party)).bool()
    scale = keep.to(torch.float64) / (1.0 - p)
    return mul_values(x, scale.float(), party), wrap_public(keep, party, torch.bool)


@implements(aten.native_dropout_backward.default)
def native_dropout_backward(grad: Any, mask: Any, scale: float) -> Any:
    """``grad * mask * scale`` with the public mask (local)."""
    party = find_party(grad, mask)
    return mul_values(grad, public_of(mask).to(torch.float32) * scale, party)  # type: ignore[union-attr]
