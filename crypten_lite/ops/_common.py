"""Layer L4: helpers shared by the op families — operands, public values, results, in-place.

Every op sees a mix of operands: encrypted tensors (secret), encrypted tensors every party knows
(public, see :meth:`MPCTensor.public_value`), plain torch tensors and Python numbers (public).
These helpers classify them and turn them into ring shares at a given scale, so each op writes
its mathematics once.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from crypten_lite.encoding import SaturationWarning, encode, mask_limit, saturate_mask
from crypten_lite.errors import EncodingError, UnsupportedOperationError
from crypten_lite.party import Party
from crypten_lite.protocols.sharing import share_public
from crypten_lite.tensor import MPCTensor, _Alias, current_user_call

__all__ = [
    "assign",
    "encode_operand",
    "find_party",
    "float_dtype",
    "is_integral",
    "is_secret",
    "logical_dtype",
    "public_of",
    "ring_of",
    "share_wise",
    "unsupported",
    "wrap",
    "wrap_public",
]

Number = int | float | bool


def find_party(*objs: Any) -> Party:
    """The party of the first encrypted tensor found in ``objs`` (nested lists included)."""
    for obj in objs:  # fast path: the leading leaves, before any container
        if isinstance(obj, MPCTensor):
            return obj.party
        if not (obj is None or isinstance(obj, (int, float, str, torch.Tensor))):
            break
    for leaf in tree_flatten(list(objs))[0]:
        if isinstance(leaf, MPCTensor):
            return leaf.party
    raise AssertionError("an op dispatched to MPCTensor has no MPCTensor argument")


def unsupported(what: str, party: Party | None = None) -> UnsupportedOperationError:
    """An :class:`UnsupportedOperationError` naming the party and the user call."""
    rank = f"party {party.rank}: " if party is not None else ""
    call = current_user_call()
    where = f" (called from {call})" if call else ""
    return UnsupportedOperationError(f"{rank}{what}{where}")


def public_of(x: Any) -> torch.Tensor | None:
    """The plaintext of a public operand, or ``None`` for a secret one.

    Plain tensors and numbers are public (every party holds the same value); an encrypted tensor
    is public only while it carries a valid public value.
    """
    if isinstance(x, MPCTensor):
        value = x.public_value()
        return None if value is None else value
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (bool, int, float)):
        return torch.tensor(x)
    return None


def is_secret(x: Any) -> bool:
    """Whether ``x`` is an encrypted tensor whose value is not public."""
    return isinstance(x, MPCTensor) and x.public_value() is None


def is_integral(value: torch.Tensor) -> bool:
    """Whether a public tensor holds integers only (public data, so inspecting it is fine)."""
    if not value.dtype.is_floating_point:
        return True
    return bool(torch.equal(value, torch.round(value))) and bool(value.abs().max() < 2**40)


def frac_of(x: Any, party: Party) -> int:
    """Fractional bits an operand is (or would be) encoded with."""
    if isinstance(x, MPCTensor):
        return x.frac_bits
    if isinstance(x, torch.Tensor):
        return party.frac_bits if x.dtype.is_floating_point else 0
    if isinstance(x, float):
        return party.frac_bits
    return 0


_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


def _op_name(mask_op: str | None) -> str:
    call = current_user_call()
    if call and mask_op:
        return f"{mask_op} (called from {call})"
    return call or mask_op or "an op"


def encode_operand(
    value: torch.Tensor, frac: int, party: Party, *, mask_op: str | None = None
) -> torch.Tensor:
    """Encode a public operand at ``frac`` fractional bits under the rule of
    :mod:`crypten_lite.encoding`.

    With ``mask_op`` (the name of a masking op: ``add``, ``where``, ``masked_fill``, ...)
    floating values beyond ``2**(40 - f)``, ``±inf`` included, saturate to the sentinel
    ``±2**(40 - f)`` with one :class:`~crypten_lite.encoding.SaturationWarning` per op and
    process. Every other out-of-range value (and NaN) raises :class:`EncodingError` naming the
    op. Public values are the same on every party, so every party raises (or saturates) alike.
    """
    name = _op_name(mask_op)
    try:
        if mask_op is not None:
            value, changed = saturate_mask(value, party.frac_bits)
            if changed:
                with _WARNED_LOCK:
                    first = mask_op not in _WARNED
                    _WARNED.add(mask_op)
                if first:
                    warnings.warn(
                        f"{name}: public values beyond ±{mask_limit(party.frac_bits):g} "
                        f"(-inf, finfo.min, -1e9 masks) saturated to that sentinel; a softmax "
                        "gives such masked positions probability 0 (warned once per op)",
                        SaturationWarning,
                        stacklevel=2,
                    )
        return encode(value, frac)
    except EncodingError as exc:
        hint = (
            ""
            if mask_op is not None
            else "; only masking operands (add/sub, where, masked_fill, attention masks) saturate"
        )
        raise EncodingError(f"party {party.rank}: public operand of {name}: {exc}{hint}") from None


def ring_of(
    x: Any, party: Party, frac: int | None = None, *, mask_op: str | None = None
) -> torch.Tensor:
    """This party's int64 share of operand ``x`` at ``frac`` fractional bits.

    Secrets are rescaled upward only (a left shift is exact and local); public operands are
    encoded (:func:`encode_operand`; ``mask_op`` names a masking op, whose operands saturate)
    and held by party 0.
    """
    own = frac_of(x, party)
    frac = own if frac is None else frac
    if isinstance(x, MPCTensor) and x.public_value() is None:
        if frac < own:
            raise AssertionError(f"cannot lower the scale of a share from {own} to {frac} bits")
        return x._share << (frac - own) if frac != own else x._share
    value = public_of(x)
    assert value is not None
    return share_public(encode_operand(value, frac, party, mask_op=mask_op), party)


def logical_dtype(*xs: Any) -> torch.dtype:
    """Result dtype of an arithmetic op: float32 if any operand is floating, else int64/bool."""
    kinds = []
    for x in xs:
        if isinstance(x, torch.Tensor):
            kinds.append(x.dtype)
        elif isinstance(x, float):
            kinds.append(torch.float32)
        elif isinstance(x, bool):
            kinds.append(torch.bool)
        elif isinstance(x, int):
            kinds.append(torch.int64)
    if any(k.is_floating_point for k in kinds):
        return torch.float32
    if kinds and all(k == torch.bool for k in kinds):
        return torch.bool
    return torch.int64


def float_dtype(dtype: torch.dtype) -> torch.dtype:
    """MPCTensor logical dtype for a torch dtype: floats become float32."""
    if dtype.is_floating_point:
        return torch.float32
    if dtype == torch.bool:
        return torch.bool
    return torch.int64


def wrap(
    share: torch.Tensor,
    party: Party,
    *,
    dtype: torch.dtype = torch.float32,
    alias: _Alias | None = None,
    public: torch.Tensor | None = None,
) -> MPCTensor:
    """An :class:`MPCTensor` around a share computed by an op."""
    return MPCTensor(share, party, dtype=dtype, alias=alias, public=public)


def wrap_public(value: torch.Tensor, party: Party, dtype: torch.dtype | None = None) -> MPCTensor:
    """An encrypted tensor every party knows: party 0 holds the encoding, the others zero."""
    dtype = float_dtype(value.dtype) if dtype is None else dtype
    value = value.detach().to(dtype)
    frac = party.frac_bits if dtype.is_floating_point else 0
    return MPCTensor(share_public(encode(value, frac), party), party, dtype=dtype, public=value)


def assign(target: Any, result: Any) -> Any:
    """Write ``result`` into ``target`` in place (the tail of every ``op_`` implementation).

    The share buffer is overwritten, so views and detached aliases see the new value; the public
    value and stashes of every alias become stale, and ``target`` keeps the result's public value
    when it has one.
    """
    if not isinstance(target, MPCTensor):
        party = find_party(result)
        if isinstance(result, MPCTensor) and result.public_value() is not None:
            target.copy_(result.public_value())
            return target
        raise unsupported(
            "cannot write an encrypted value into a plain tensor in place (encrypt that tensor "
            "first, e.g. with crypten_lite.encrypt_module)",
            party,
        )
    party = target.party
    if isinstance(result, MPCTensor):
        if result.frac_bits > target.frac_bits:
            raise unsupported(
                f"cannot write an encrypted {result.dtype} value into an encrypted "
                f"{target.dtype} tensor in place (that would need a secure floor)",
                party,
            )
        share = ring_of(result, party, target.frac_bits)
        public = result.public_value()
    else:
        public = public_of(result)
        assert public is not None
        share = ring_of(public.to(target.dtype), party, target.frac_bits)
    target._share.copy_(share.expand(target._share.shape))
    target.mark_written()
    if public is not None:
        target._pub = public.to(target.dtype).expand(target.shape).clone()
        target._pub_version = target._alias.version
    return target


def share_wise(func: Callable[..., Any], x: MPCTensor, *args: Any, **kwargs: Any) -> MPCTensor:
    """Apply a data-movement op (view, permute, index with public indices, ...) to the share.

    Such ops commute with the sum of shares, so applying them to every party's share applies
    them to the value; a public value moves the same way. When the result shares the input's
    buffer (a view), it keeps the input's alias identity, so in-place writes reach the base.
    """
    party = x.party
    out_share = func(x._share, *args, **kwargs)
    public = x.public_value()
    # as_strided reads the share's memory layout, which a public value need not share.
    strided = func in (torch.ops.aten.as_strided.default, torch.ops.aten._reshape_alias.default)
    out_public = func(public, *args, **kwargs) if public is not None and not strided else None
    same = out_share.untyped_storage().data_ptr() == x._share.untyped_storage().data_ptr()
    alias = x._alias if same else None
    return MPCTensor(out_share, party, dtype=x.dtype, alias=alias, public=out_public)


def shares_of(xs: Sequence[Any], party: Party, frac: int) -> list[torch.Tensor]:
    """:func:`ring_of` for each of a list of operands (``cat``, ``stack``)."""
    return [ring_of(x, party, frac) for x in xs]


def map_public(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """Replace every encrypted public tensor in ``tree`` by its plaintext."""

    def one(x: Any) -> Any:
        if isinstance(x, MPCTensor):
            value = x.public_value()
            assert value is not None
            return fn(value)
        return x

    return tree_map(one, tree)
