"""Layer L4: ``MPCTensor`` — a ``torch.Tensor`` whose value is secret-shared among the parties.

An :class:`MPCTensor` is a wrapper subclass (``torch.Tensor._make_wrapper_subclass``): to torch it
looks like a float32 tensor of some shape with no storage of its own, so ``torch.nn`` modules,
``torch.autograd`` and ``torch.optim`` run on it unmodified. What it holds is this party's int64
share of the fixed-point encoding of the value (``x = sum_i share_i mod 2**64``, scaled by
``2**f``), the :class:`~crypten_lite.runtime.party.Party` it belongs to, and bookkeeping:

* every aten op that reaches :meth:`MPCTensor.__torch_dispatch__` is looked up in a table filled
  by :func:`implements` (``crypten_lite/ops/``, one module per op family); an op not in the table
  raises :class:`~crypten_lite.errors.UnsupportedOperationError` naming the aten op and, when
  known, the user-level call that produced it. Nothing ever runs a torch kernel on a share as if
  it were the value;
* :meth:`MPCTensor.__torch_function__` keeps a few high-level calls whole (registered with
  :func:`implements_function`, e.g. ``scaled_dot_product_attention``) and remembers the
  user-level call for error messages;
* values every party knows (``torch.ones_like(x)``, the seed gradient of ``loss.backward()``) are
  *public*: the tensor carries the plaintext too, so multiplying by it is local. All tensors that
  alias one share buffer (views, ``detach``) share an :class:`_Alias` whose version every in-place
  write bumps, which invalidates the public value and any stashed protocol by-product;
* protocol by-products that backward needs (the sign bits of a ReLU, the one-hot argmax of a max
  pool) are stashed on the op's output (:meth:`MPCTensor.stash`);
* ``bool()``, ``.item()``, ``.tolist()``, ``.numpy()``, ``float()``, ``int()`` raise
  :class:`~crypten_lite.errors.SecretLeakError`; ``repr`` shows shape, encoding and party only.
  :meth:`MPCTensor.get_plain_text` is the one exit.

Logical dtypes: ``float32`` tensors are encoded with the session's ``f`` fractional bits;
``int64`` and ``bool`` tensors (secret indices, comparison results) with 0 fractional bits.

Observers (:func:`observe`), the fake mode of ``check_model`` (:func:`fake_mode`) and the
user-level call of error messages are per-context state (:mod:`crypten_lite.tensor_context`);
the op tables and :func:`implements` live in :mod:`crypten_lite.tensor_table`. Both are
importable from here.
"""

from __future__ import annotations

import enum
import functools
import warnings
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from crypten_lite.errors import EncodingError, SecretLeakError, UnsupportedOperationError
from crypten_lite.protocols.opening import open_shares
from crypten_lite.runtime.encoding import decode, encode
from crypten_lite.runtime.party import Party
from crypten_lite.tensor_context import (
    _DEPTH,
    _FAKE,
    _OBSERVERS,
    _USER_CALL,
    FakeSession,
    OpObserver,
    _call_name,
    fake_mode,
    observe,
)
from crypten_lite.tensor_context import current_user_call as current_user_call
from crypten_lite.tensor_table import _FUNCTIONS, implements, implements_function, registered_ops
from crypten_lite.tensor_table import _OPS as _OPS
from crypten_lite.tensor_table import OpEntry as OpEntry
from crypten_lite.tensor_table import OpOverload as OpOverload

__all__ = [
    "FakeSession",
    "MPCTensor",
    "OpObserver",
    "fake_mode",
    "implements",
    "implements_function",
    "is_encrypted",
    "observe",
    "ptype",
    "registered_ops",
]

aten = torch.ops.aten

_LEAK_MESSAGE = "cannot branch on or read a secret; call get_plain_text()"


class ptype(enum.Enum):  # noqa: N801 - CrypTen's name
    """How a secret is shared: additively over Z_2^64 or by XOR over int64 words (CrypTen's name)."""

    arithmetic = 0
    binary = 1


# --------------------------------------------------------------------------- the tensor


class _Alias:
    """Identity of one share buffer; tensors aliasing it (views, ``detach``) share the object.

    ``version`` counts in-place writes through any of them: a public value or a stashed
    by-product recorded at another version is stale. ``fixed`` is ``None`` unless the buffer
    is a weight whose Beaver masks may be reused (``crypten_lite.nn.reuse_weight_masks``): then
    it maps a view's geometry to ``(version, FixedOperand)``.

    Writes that bypass the op table — through the raw ``MPCTensor.share`` — are counted too:
    once the share has been handed out, torch's version counter of that tensor (shared by all
    its views and ``detach``-ed aliases, bumped by every in-place write) is part of ``version``.
    """

    __slots__ = ("_base", "_watched", "_writes", "fixed")

    def __init__(self) -> None:
        self._writes = 0
        self._watched: torch.Tensor | None = None
        self._base = 0
        self.fixed: dict[tuple[Any, ...], tuple[int, Any]] | None = None

    @property
    def version(self) -> int:
        if self._watched is None:
            return self._writes
        return self._writes + self._watched._version - self._base

    def mark_written(self) -> None:
        self._writes += 1

    def watch(self, share: torch.Tensor) -> None:
        """Count raw writes through ``share`` from now on (once per buffer suffices: views
        share torch's version counter)."""
        if self._watched is None:
            try:
                self._base = share._version
            except RuntimeError:  # an inference-mode tensor has no version counter to watch
                return
            self._watched = share


def _frac_for(dtype: torch.dtype, party: Party | None, fake_frac: int) -> int:
    if dtype.is_floating_point:
        return party.frac_bits if party is not None else fake_frac
    return 0


class MPCTensor(torch.Tensor):
    """A secret-shared tensor that torch sees as a float32 (or int64/bool) tensor.

    Construct one with ``crypten_lite.cryptensor``; this constructor wraps an existing share.

    Args:
        share: this party's int64 share of the fixed-point encoding (any shape and strides).
        party: the party holding it.
        requires_grad: as for any tensor.
        dtype: logical dtype: float32 (``f`` fractional bits), int64 or bool (0 bits).
        alias: the share buffer's :class:`_Alias` when ``share`` is a view of another tensor's.
        public: the plaintext, when every party knows it (the share is then party 0's encoding).
    """

    _share: torch.Tensor
    _party: Party | None
    _frac: int
    _alias: _Alias
    _pub: torch.Tensor | None
    _pub_version: int
    _stash: dict[str, Any]
    _stash_version: int
    _fake: torch.Tensor | None

    @staticmethod
    def __new__(
        cls,
        share: torch.Tensor,
        party: Party | None,
        *,
        requires_grad: bool = False,
        dtype: torch.dtype = torch.float32,
        alias: _Alias | None = None,
        public: torch.Tensor | None = None,
        _fake: torch.Tensor | None = None,
    ) -> MPCTensor:
        if share.dtype != torch.int64:
            raise TypeError(f"an MPCTensor share is an int64 ring tensor, got {share.dtype}")
        if dtype not in (torch.float32, torch.int64, torch.bool):
            raise TypeError(f"MPCTensor logical dtype must be float32, int64 or bool, got {dtype}")
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            share.shape,
            strides=share.stride() if _fake is None else _fake.stride(),
            dtype=dtype,
            device=share.device,
            requires_grad=requires_grad,
        )
        out._share = share
        out._party = party
        fake = _FAKE.get()
        out._frac = _frac_for(dtype, party, fake.frac_bits if fake else 16)
        out._alias = alias if alias is not None else _Alias()
        out._pub = public
        out._pub_version = out._alias.version
        out._stash = {}
        out._stash_version = out._alias.version
        out._fake = _fake
        return out

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Everything happens in __new__; torch.Tensor.__init__ takes no arguments.
        super().__init__()

    @classmethod
    def fake(cls, value: torch.Tensor, *, requires_grad: bool = False) -> MPCTensor:
        """A fake encrypted tensor for :func:`fake_mode`: it computes on ``value`` in the clear.

        Only for checking which ops a model needs; it has no party and no real shares.
        """
        value = value.detach().to(torch.float32 if value.is_floating_point() else value.dtype)
        dtype = value.dtype if value.dtype in (torch.int64, torch.bool) else torch.float32
        placeholder = torch.zeros((), dtype=torch.int64).expand(value.shape)
        return cls(placeholder, None, requires_grad=requires_grad, dtype=dtype, _fake=value)

    # ------------------------------------------------------------------- accessors

    @property
    def share(self) -> torch.Tensor:
        """This party's int64 share of the fixed-point encoding (CrypTen's ``.share``).

        The tensor itself, not a copy: an in-place write to it is a write to this value, and
        invalidates what was cached for the old one (public value, stash, reused weight mask).
        ``share.data`` has a version counter of its own and escapes this: do not write there.
        """
        self._alias.watch(self._share)
        return self._share

    @property
    def party(self) -> Party:
        """The party that holds this share."""
        if self._party is None:
            raise UnsupportedOperationError("a fake encrypted tensor (check_model) has no party")
        return self._party

    @property
    def frac_bits(self) -> int:
        """Fractional bits of the encoding (0 for int64/bool logical dtypes)."""
        return self._frac

    @property
    def encoder_scale(self) -> int:
        """``2**frac_bits`` (CrypTen's ``encoder.scale``)."""
        return 1 << self._frac

    @property
    def ptype(self) -> ptype:
        """Always :attr:`ptype.arithmetic`; see :meth:`to_binary` for XOR sharing."""
        return ptype.arithmetic

    @property
    def is_fake(self) -> bool:
        """Whether this is a plaintext stand-in made by :meth:`fake`."""
        return self._fake is not None

    def public_value(self) -> torch.Tensor | None:
        """The plaintext if every party knows it (and nothing wrote to the share since)."""
        if self._pub is not None and self._pub_version == self._alias.version:
            return self._pub
        return None

    def stash(self, key: str, value: Any) -> None:
        """Keep a protocol by-product (e.g. ReLU sign bits) for the backward of this output."""
        if self._stash_version != self._alias.version:
            self._stash = {}
            self._stash_version = self._alias.version
        self._stash[key] = value

    def stashed(self, key: str) -> Any:
        """A by-product kept by :meth:`stash`, or ``None`` (also when the tensor was written)."""
        if self._stash_version != self._alias.version:
            return None
        return self._stash.get(key)

    def mark_written(self) -> None:
        """Record an in-place write to the share: public values and stashes become stale.

        Also bumps torch's version counter of the share buffer (shared by all its views): an
        in-place write made inside ``__torch_dispatch__`` (where every op implementation runs)
        does not bump it, since the autograd keys that do are excluded there, and state keyed
        by that counter — the replicated family's companion shares (``Party.companion``) — must
        see the write, or a stale companion would give a silently wrong product.
        """
        self._alias.mark_written()
        try:
            torch.autograd.graph.increment_version(self._share)
        except RuntimeError:  # an inference-mode tensor has no version counter
            pass

    def get_plain_text(self, dst: int | None = None) -> torch.Tensor | None:
        """Open and decode the value: every party gets it, or only ``dst`` (others get ``None``).

        This is the one deliberate exit of a secret. Cost: 1 round, ``8 * numel`` bytes to each
        peer (to ``dst`` only when given); none for public values.
        """
        if self._fake is not None:
            return self._fake.detach().clone()
        public = self.public_value()
        if public is not None:
            if dst is not None and dst != self.party.rank:
                return None
            return public.detach().clone().to(self.dtype)
        opened = open_shares([self._share.contiguous()], self.party, dst=dst, tag="get_plain_text")
        if opened is None:
            return None
        value_pub = opened[0]
        if self.dtype == torch.float32:
            return decode(value_pub, self._frac)
        return value_pub.to(self.dtype)

    def reveal(self, dst: int | None = None) -> torch.Tensor | None:
        """CrypTen's alias of :meth:`get_plain_text`."""
        return self.get_plain_text(dst)

    def to_binary(self) -> Any:
        """This value XOR-shared: a ``BinaryMPCTensor`` (A2B conversion, a few rounds)."""
        from_arithmetic = _BINARY_FACTORY.get("from_arithmetic")
        if from_arithmetic is None:
            raise UnsupportedOperationError("binary sharing is not available (ops.binary)")
        return from_arithmetic(self)

    # ------------------------------------------------------------------- no leaks

    def _leak(self, what: str) -> Any:
        fake = _FAKE.get()
        if fake is not None and self._fake is not None:
            fake.record(what, "reads a secret value (data-dependent Python control flow)")
            return None
        rank = f"party {self._party.rank}: " if self._party is not None else ""
        raise SecretLeakError(f"{rank}{what} on an encrypted tensor: {_LEAK_MESSAGE}")

    def __bool__(self) -> bool:
        if self._leak("bool()") is None and self._fake is not None:
            return bool(self._fake)
        raise AssertionError("unreachable")  # pragma: no cover

    def item(self) -> Any:
        self._leak(".item()")
        assert self._fake is not None
        return self._fake.item()

    def tolist(self) -> Any:
        self._leak(".tolist()")
        assert self._fake is not None
        return self._fake.tolist()

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        self._leak(".numpy()")
        assert self._fake is not None
        return self._fake.numpy()

    def __float__(self) -> float:
        self._leak("float()")
        assert self._fake is not None
        return float(self._fake)

    def __int__(self) -> int:
        self._leak("int()")
        assert self._fake is not None
        return int(self._fake)

    def __index__(self) -> int:
        self._leak("operator.index()")
        assert self._fake is not None
        return int(self._fake)

    def __complex__(self) -> complex:
        self._leak("complex()")
        assert self._fake is not None
        return complex(self._fake)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        self._leak("numpy.asarray()")
        assert self._fake is not None
        return self._fake.numpy()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise UnsupportedOperationError(
            "encrypted tensors are never pickled; use crypten_lite.save(tensor, path)"
        )

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        if self._fake is not None:
            where = "fake (check_model)"
        elif self._party is not None:
            where = f"party {self._party.rank}/{self._party.world_size}"
        else:
            where = "no party"
        enc = f"fixed-point f={self._frac}" if self.dtype == torch.float32 else f"{self.dtype} ring"
        extra = ", public" if self.public_value() is not None else ""
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"MPCTensor(shape={tuple(self.shape)}, encoding={enc}, {where}{extra}{grad})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return self.__repr__()

    def __deepcopy__(self, memo: dict[int, Any]) -> MPCTensor:
        if id(self) in memo:
            return memo[id(self)]  # type: ignore[no-any-return]
        out = MPCTensor(
            self._share.clone(),
            self._party,
            requires_grad=self.requires_grad,
            dtype=self.dtype,
            public=self.public_value(),
            _fake=None if self._fake is None else self._fake.clone(),
        )
        if getattr(self, "_is_param", False):
            out = torch.nn.Parameter(out, requires_grad=self.requires_grad)  # type: ignore[assignment]
        memo[id(self)] = out
        return out

    # ------------------------------------------------------------------- dispatch

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _TEXT_FUNCTIONS:
            # torch.Tensor.__repr__(x) and friends would format the values, i.e. run secure
            # comparisons (and desynchronise the parties if only one prints): always local.
            return _text(args[0])
        override = _FUNCTIONS.get(func)
        if override is not None:
            if _BRIDGE_HOOK and _FAKE.get() is None:
                party = _party_of(tuple(args), kwargs)
                if (
                    party is not None
                    and party.world_size == 3
                    and party.config.protocol == "replicated"
                ):
                    # kept-whole calls call protocols directly: run them whole on the view
                    return _BRIDGE_HOOK[1](override, tuple(args), kwargs)
            return override(*args, **kwargs)
        if func in _CAST_FUNCTIONS:
            _warn_float_cast(func, args, kwargs)
        token = None
        if _USER_CALL.get() is None:
            name = _CALL_NAMES.get(func)
            if name is None:
                name = _CALL_NAMES[func] = _call_name(func)
            token = _USER_CALL.set(name)
        try:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        finally:
            if token is not None:
                _USER_CALL.reset(token)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls,
        func: OpOverload,
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        args = tuple(args)
        try:
            return _dispatch(func, args, kwargs)
        except UnsupportedOperationError as exc:
            # torch's Python operators (``x // 2``) turn a TypeError into NotImplemented and
            # Python then reports "unsupported operand type(s)"; keep ours for _operator().
            sink = _OPERATOR_ERRORS.get()
            if sink is not None:
                sink.append(exc)
            raise


def _dispatch(func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The body of :meth:`MPCTensor.__torch_dispatch__`: look ``func`` up and run it."""
    fake = _FAKE.get()
    if fake is not None:
        return _fake_dispatch(fake, func, args, kwargs)
    if args and type(args[0]) is torch.Tensor and func._schema.is_mutable:
        _check_plain_gradient_target(func, args)
    entry = _OPS.get(func)
    if entry is None:
        raise UnsupportedOperationError(_unsupported_message(func, args))
    if entry.check is not None:
        reason = entry.check(*args, **kwargs)
        if reason is not None:
            raise UnsupportedOperationError(_unsupported_message(func, args, reason))
    impl = entry.impl
    if entry.public_fast and _all_public(args, kwargs):
        impl = functools.partial(_public_dispatch, func)
    elif _BRIDGE_HOOK:
        party = _party_of(args, kwargs)
        if party is not None and party.world_size == 3 and party.config.protocol == "replicated":
            # The replicated family: non-local ops run on the helper-dealer view (bridge.py).
            impl = _BRIDGE_HOOK[0](func, impl, args, kwargs)
    depth = _DEPTH.get()
    observers = _OBSERVERS.get()
    depth_token = _DEPTH.set(depth + 1)
    try:
        if depth or not observers:
            return impl(*args, **kwargs)
        tokens = [obs.before(func, args, kwargs) for obs in observers]
        out = impl(*args, **kwargs)
        for obs, tok in zip(observers, tokens, strict=True):
            obs.after(tok, func, args, kwargs, out)
        return out
    except EncodingError as exc:
        # A public value that cannot be encoded: name the user-level op. Public operands are
        # the same on every party, so every party raises here alike.
        if depth:
            raise
        raise EncodingError(_encoding_message(func, args, exc)) from None
    finally:
        _DEPTH.reset(depth_token)


def _party_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Party | None:
    """The party of the first encrypted operand (the first argument, usually: no flattening)."""
    if args and isinstance(args[0], MPCTensor):
        return args[0]._party
    for leaf in tree_flatten((list(args), kwargs))[0]:
        if isinstance(leaf, MPCTensor):
            return leaf._party
    return None


def _rank_of(args: Sequence[Any]) -> str:
    for a in tree_flatten(list(args))[0]:
        if isinstance(a, MPCTensor) and a._party is not None:
            return f"party {a._party.rank}: "
    return ""


def _encoding_message(func: OpOverload, args: Sequence[Any], exc: EncodingError) -> str:
    """``party 0: aten.mul.Tensor (from Tensor.__mul__): value out of the fixed-point range``."""
    detail = str(exc)
    if detail.startswith("party ") and ": " in detail:
        detail = detail.split(": ", 1)[1]
    call = current_user_call()
    where = f" (from {call})" if call else ""
    return f"{_rank_of(args)}{func}{where}: {detail}"


def _unsupported_message(func: OpOverload, args: Sequence[Any], reason: str | None = None) -> str:
    call = _USER_CALL.get()
    where = f" (called from {call})" if call else " (called by autograd or torch internals)"
    why = reason or "it has no secure implementation"
    return (
        f"{_rank_of(args)}aten op {func} is not supported on encrypted tensors{where}: {why}. "
        "Nothing was computed on the shares; crypten_lite.check_model(model, input) lists "
        "every unsupported op of a model at once."
    )


def _all_public(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    # Fast answer for the common case, a secret operand at the top level (``x + y``): it is
    # a leaf of the flattened arguments too, so the answer is False without flattening.
    for arg in args:
        if isinstance(arg, MPCTensor) and arg.public_value() is None:
            return False
    return all(
        leaf.public_value() is not None
        for leaf in tree_flatten((list(args), kwargs))[0]
        if isinstance(leaf, MPCTensor)
    )


def _public_dispatch(func: OpOverload, *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` on the plaintexts of public operands; wrap tensor results as public."""
    from_tensor = next(
        leaf for leaf in tree_flatten((list(args), kwargs))[0] if isinstance(leaf, MPCTensor)
    )
    party = from_tensor.party

    def unwrap(x: Any) -> Any:
        return x.public_value() if isinstance(x, MPCTensor) else x

    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))

    def wrap(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and (
            x.dtype.is_floating_point or x.dtype in (torch.int64, torch.bool)
        ):
            dtype = torch.float32 if x.dtype.is_floating_point else x.dtype
            value = x.to(dtype)
            frac = party.frac_bits if dtype == torch.float32 else 0
            ring = encode(value, frac)
            share = ring if party.rank == 0 else torch.zeros_like(ring)
            return MPCTensor(share, party, dtype=dtype, public=value)
        return x

    return tree_map(wrap, out)


def is_encrypted(value: Any) -> bool:
    """Whether ``value`` is an encrypted tensor (:class:`MPCTensor`)."""
    return isinstance(value, MPCTensor)


# --------------------------------------------------------------------------- fake dispatch


def _fake_dispatch(
    session: FakeSession, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``func`` on the plaintext stand-ins; record it when it is not supported."""
    entry = _OPS.get(func)
    call = _USER_CALL.get() or "autograd / torch internals"
    if entry is None:
        session.record(str(func), call)
    elif entry.check is not None:
        reason = entry.check(*args, **kwargs)
        if reason is not None:
            session.record(str(func), f"{call}: {reason}")

    def unwrap(x: Any) -> Any:
        if isinstance(x, MPCTensor):
            if x._fake is None:
                raise UnsupportedOperationError(
                    "fake_mode mixes a fake tensor with a real encrypted tensor"
                )
            return x._fake
        return x

    plain_args = tree_map(unwrap, args)
    plain_kwargs = tree_map(unwrap, kwargs)
    out = func(*plain_args, **plain_kwargs)
    if func._schema.is_mutable:
        # In-place ops mutated the stand-in; return the wrappers the op returns.
        mutated = [a for a in args if isinstance(a, MPCTensor)]
        if isinstance(out, torch.Tensor) and mutated:
            for a in mutated:
                if a._fake is out:
                    if a.shape != out.shape or a.stride() != out.stride():
                        # an in-place view op (t_, squeeze_, ...) changed the stand-in's geometry
                        with torch.utils._mode_utils.no_dispatch():
                            a.as_strided_(out.shape, out.stride(), a.storage_offset())
                    return a
            return mutated[0]

    def wrap(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and not isinstance(x, MPCTensor):
            if x.dtype.is_floating_point or x.dtype in (torch.int64, torch.bool):
                return MPCTensor.fake(x)
        return x

    return tree_map(wrap, out)


# --------------------------------------------------------------------------- hooks for ops

# ``ops.binary`` registers the A2B factory here (it imports this module, not the reverse).
_BINARY_FACTORY: dict[str, Callable[..., Any]] = {}
# ``crypten_lite.bridge`` registers the replicated family's dispatch hook here:
# ``hook(func, impl, args, kwargs) -> impl`` (the op to run, bridged or native).
_BRIDGE_HOOK: list[Callable[..., Callable[..., Any]]] = []


# The user-level name of each torch function seen (``torch.nn.functional.conv2d``), computed
# once: naming costs microseconds, paid by every top-level call on an encrypted tensor.
_CALL_NAMES: dict[Callable[..., Any], str] = {}


# --------------------------------------------------------------------------- local text

# Every torch-level path that turns a tensor into text: answered from shape and encoding only.
_TEXT_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {torch.Tensor.__repr__, torch.Tensor.__format__}
)


def _text(x: Any) -> str:
    return MPCTensor.__repr__(x) if isinstance(x, MPCTensor) else object.__repr__(x)


# --------------------------------------------------------------------------- float casts

_CAST_FUNCTIONS: frozenset[Callable[..., Any]] = frozenset(
    {torch.Tensor.double, torch.Tensor.half, torch.Tensor.bfloat16, torch.Tensor.to}
)
_OTHER_FLOATS = (torch.float64, torch.float16, torch.bfloat16)


def _warn_float_cast(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Warn that an encrypted tensor stays float32 when code asks for float64/16 or bfloat16.

    Every float is the same fixed-point encoding (``f`` fractional bits), so another float
    dtype could only be a label: the result keeps ``dtype == torch.float32`` (README,
    "Limitations"). Only the first argument's own cast counts (``x.to(torch.float64)``).
    """
    if func is torch.Tensor.to:
        asked = [a for a in (*args[1:], kwargs.get("dtype")) if isinstance(a, torch.dtype)]
        if not any(a in _OTHER_FLOATS for a in asked):
            return
        target = next(a for a in asked if a in _OTHER_FLOATS)
    else:
        target = {
            torch.Tensor.double: torch.float64,
            torch.Tensor.half: torch.float16,
            torch.Tensor.bfloat16: torch.bfloat16,
        }[func]
    if not (isinstance(args[0], MPCTensor) and args[0].dtype.is_floating_point):
        return
    warnings.warn(
        f"encrypted tensors are fixed point with f={args[0].frac_bits} fractional bits whatever "
        f"the float dtype: the cast to {target} keeps dtype torch.float32 (same values, same "
        "precision)",
        UserWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- gradients of plain


def _check_plain_gradient_target(func: OpOverload, args: tuple[Any, ...]) -> None:
    """Refuse, with the contract, an encrypted gradient accumulating into a plaintext ``.grad``.

    A plain tensor that requires grad and meets an encrypted one gets an encrypted gradient
    (it depends on the secrets). Autograd stores it as the tensor's ``.grad`` when that is
    ``None``; when the tensor already holds a plaintext ``.grad``, autograd adds in place,
    which cannot be done without revealing. Every party runs the same backward, so every
    party raises here, before anything is computed.
    """
    if torch._C._current_graph_task_id() == -1:  # not inside a backward pass
        return
    if not any(
        isinstance(a, MPCTensor) and a.public_value() is None for a in tree_flatten(list(args))[0]
    ):
        return
    rank = _rank_of(args)
    raise UnsupportedOperationError(
        f"{rank}a plain tensor of shape {tuple(args[0].shape)} that requires grad was used with "
        f"encrypted tensors, so its gradient is encrypted, and it cannot be added ({func}) to "
        "the plaintext .grad that tensor already holds. Public arguments of encrypted "
        "computations are meant to be constants: pass them detached or with "
        "requires_grad=False; to train them, encrypt them (crypten_lite.encrypt_module, or "
        "cryptensor(..., requires_grad=True)); to receive their gradient encrypted, set their "
        ".grad to None before backward (optimizer.zero_grad() does)."
    )


# --------------------------------------------------------------------------- Python operators

# Errors raised by dispatch while one of the operators below runs (None outside them).
_OPERATOR_ERRORS: ContextVar[list[UnsupportedOperationError] | None] = ContextVar(
    "crypten_lite_operator_errors", default=None
)


def _operator(name: str) -> Callable[..., Any]:
    """``MPCTensor.<name>``: torch's operator, but the library's error reaches the user.

    torch's Python operators catch ``TypeError`` and return ``NotImplemented`` (so that the
    other operand may try); :class:`UnsupportedOperationError` is a ``TypeError``, so ``x // 2``
    would end in Python's bare "unsupported operand type(s) for //". The wrapper collects the
    errors dispatch raised during the call and re-raises the first when torch gave up.
    """
    base = getattr(torch.Tensor, name)

    def op(self: torch.Tensor, *args: Any) -> Any:
        sink: list[UnsupportedOperationError] = []
        token = _OPERATOR_ERRORS.set(sink)
        try:
            out = base(self, *args)
        finally:
            _OPERATOR_ERRORS.reset(token)
        if out is NotImplemented and sink:
            raise sink[0]
        return out

    op.__name__ = op.__qualname__ = name
    op.__doc__ = getattr(base, "__doc__", None)
    return op


_OPERATORS = [
    f"__{prefix}{op}__"
    for op in (
        "add", "sub", "mul", "truediv", "div", "floordiv", "mod", "pow", "matmul",
        "and", "or", "xor", "lshift", "rshift",
    )
    for prefix in ("", "r", "i")
] + ["__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"]  # fmt: skip
for _name in _OPERATORS:
    if hasattr(torch.Tensor, _name):
        setattr(MPCTensor, _name, _operator(_name))
# Defining __eq__ would make the class unhashable; tensors hash by identity.
MPCTensor.__hash__ = torch.Tensor.__hash__  # type: ignore[method-assign]
