"""Layer L4: the dispatch hook of the replicated family: non-local ops run on the helper view.

Under ``Config.protocol == "replicated"`` (3 parties, no dealer process) :func:`bridged`
decides, per aten op, whether it runs natively on the 3-party sharing (ops in
:data:`NATIVE_OPS`: data movement, additions, public factories — and whatever the replicated
family registers with :func:`register_native`, its products) or is *bridged*:

1. Reshare: every secret input that is not already held by parties 0 and 1 alone is moved onto
   them (:func:`~crypten_lite.protocols.helper_dealer.reshare_to_pair`: one message from party 2
   to party 1 for the whole op, 8 bytes per element; none when every input already has the
   form). Public inputs are already in that form (party 0 holds the encoding).
2. Parties 0 and 1 run the op's existing implementation on the 2-party view of the session
   (:class:`~crypten_lite.runtime.helper.HelperSession`: a world-size-2 party in the ``beaver`` family
   whose dealer client talks to party 2). Nested ops inside it dispatch normally on that view.
   Party 2 serves their dealer requests with the seeds agreed at set-up until party 0 sends
   ``bridge.done``, whose note describes the outputs (tree, shapes, strides, dtypes) or carries
   the op's error, so that every party raises alike.
3. Results: each secret output is the 2-party sharing on parties 0 and 1 and zeros of the same
   geometry on party 2, flagged so the next bridged op skips step 1 for it. Stashed protocol
   by-products (a ReLU's sign bits) stay on the outputs of parties 0 and 1, where the backward
   op runs. Public outputs (and plain tensors) are sent by party 0 to party 2 after the note.
   In-place ops write the result back into the 3-party input.

Security: see :mod:`crypten_lite.runtime.helper` (semi-honest, honest majority, one corruption; party 2
sees request shapes and its own masked sends; parties 0 and 1 see a 2-party dealer-model
transcript).
"""

from __future__ import annotations

import builtins
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.utils._pytree import (
    tree_flatten,
    tree_map,
    tree_unflatten,
    treespec_dumps,
    treespec_loads,
)

import crypten_lite.errors as errors
from crypten_lite.errors import ProtocolError, UnsupportedOperationError
from crypten_lite.protocols.helper_dealer import reshare_to_pair
from crypten_lite.runtime.helper import HelperSession, helper_session
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import _BRIDGE_HOOK, MPCTensor, OpOverload

__all__ = [
    "NATIVE_OPS",
    "bridged",
    "pair_call",
    "register_companion",
    "register_native",
    "uses_bridge",
]

aten = torch.ops.aten

# Marks an output of a bridged op: its sharing is already on parties 0 and 1 (zero on 2).
PAIR_KEY = "bridge.pair"

_LOCAL_NAMES = """
_reshape_alias.default _unsafe_view.default alias.default as_strided.default
as_strided_.default cat.default clone.default contiguous.default detach.default detach_.default
diagonal.default expand.default expand_as.default flatten.using_ints flip.default
lift_fresh.default movedim.int narrow.default permute.default repeat.default reshape.default
reshape_as.default roll.default select.int slice.Tensor split.Tensor split_with_sizes.default
squeeze.default squeeze.dim squeeze.dims squeeze_.default squeeze_.dim squeeze_.dims
stack.default t.default t_.default transpose.int transpose_.default unbind.int unflatten.int
unsafe_split.Tensor unsafe_split_with_sizes.default unsqueeze.default unsqueeze_.default
view.default view_as.default unfold.default tril.default triu.default select_backward.default
slice_backward.default diagonal_backward.default unfold_backward.default diag_embed.default
add.Tensor add_.Tensor sub.Tensor sub_.Tensor neg.default neg_.default sum.default
sum.dim_IntList
empty_like.default zeros_like.default ones_like.default full_like.default new_empty.default
new_empty_strided.default new_zeros.default new_ones.default new_full.default
"""
# Ops that run on the 3-party additive sharing without messages or dealer material. They are
# linear maps of the shares (public constants added by party 0 only), so a zero share on party
# 2 stays zero: their outputs keep the paired form of their inputs.
_LOCAL_OPS: frozenset[OpOverload] = frozenset(
    getattr(getattr(aten, name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1])
    for name in _LOCAL_NAMES.split()
)
NATIVE_OPS: set[OpOverload] = set(_LOCAL_OPS)


# How party 1 finds its copy of party 2's share (the replicated companion), registered by the
# replicated family: ``fn(x)`` returns, on party 1, ``x_2`` when it holds it; on parties 0 and
# 2, any tensor when party 1 holds it (they then draw no mask for ``x``); ``None`` otherwise,
# alike on every party. Such inputs cost no resharing message.
_COMPANION: list[Callable[[MPCTensor], torch.Tensor | None]] = []


def register_companion(fn: Callable[[MPCTensor], torch.Tensor | None]) -> None:
    """Let the bridge reshare for free the inputs whose companion party 1 holds."""
    _COMPANION[:] = [fn]


def register_native(ops: Iterable[OpOverload]) -> None:
    """Mark ``ops`` as implemented natively by the replicated family (no bridge)."""
    NATIVE_OPS.update(ops)


def uses_bridge(party: Party) -> bool:
    """Whether this party's session bridges its non-local ops (the replicated family)."""
    return party.world_size == 3 and party.config.protocol == "replicated"


def _is_native(func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if func is aten._to_copy.default:
        # A cast that stays floating (x.double() keeps float32; int -> float scales by 2**f)
        # is local; float -> int or bool rounds or compares.
        target = kwargs.get("dtype")
        source = args[0].dtype if args and isinstance(args[0], torch.Tensor) else None
        return target is None or target.is_floating_point or source == target
    if func not in NATIVE_OPS:
        return False
    # A fractional alpha is a product by a public real: it needs truncation.
    alpha = kwargs.get("alpha", 1)
    return isinstance(alpha, int) or (isinstance(alpha, float) and alpha.is_integer())


def bridged(
    func: OpOverload, impl: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[..., Any]:
    """The implementation to run for ``func`` under the replicated family (module docstring)."""
    if _is_native(func, args, kwargs):
        if func in _LOCAL_OPS and _all_paired(args, kwargs):
            return functools.partial(_keep_paired, impl)
        return impl

    def run(*a: Any, **k: Any) -> Any:
        return _run_bridged(func, impl, a, k)

    return run


def _all_paired(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every secret operand is held by parties 0 and 1 alone (and there is one)."""
    secret = [
        x
        for x in tree_flatten((args, kwargs))[0]
        if isinstance(x, MPCTensor) and x.public_value() is None
    ]
    return bool(secret) and all(x.stashed(PAIR_KEY) for x in secret)


def _keep_paired(impl: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a local op on paired operands; flag its secret outputs as paired too."""
    out = impl(*args, **kwargs)
    for leaf in tree_flatten(out)[0]:
        if isinstance(leaf, MPCTensor) and leaf.public_value() is None:
            leaf.stash(PAIR_KEY, True)
    return out


def _written_ids(
    func: OpOverload | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> set[int]:
    """``id`` of every encrypted tensor that ``func`` writes (per its schema)."""
    written: set[int] = set()
    if func is None or not func._schema.is_mutable:
        return written
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = args[i] if i < len(args) else kwargs.get(arg.name)
        for leaf in tree_flatten(value)[0]:
            if isinstance(leaf, MPCTensor):
                written.add(id(leaf))
    return written


def _run_bridged(
    func: OpOverload | None, impl: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    leaves, spec = tree_flatten((args, kwargs))
    party = next(x.party for x in leaves if isinstance(x, MPCTensor))
    session = helper_session(party)
    # Step 1: reshare the secret inputs that are not yet on parties 0 and 1.
    moving = [
        k
        for k, x in enumerate(leaves)
        if isinstance(x, MPCTensor) and x.public_value() is None and not x.stashed(PAIR_KEY)
    ]
    companion = [_COMPANION[0](leaves[k]) for k in moving] if _COMPANION else None
    moved = reshare_to_pair(
        [leaves[k].share for k in moving], party, session.mask_prg, companion=companion
    )
    pair_shares = dict(zip(moving, moved, strict=True))
    if session.is_dealer:
        return _dealer_side(session, func, leaves)
    written = _written_ids(func, args, kwargs)
    return _compute_side(session, func, impl, leaves, spec, pair_shares, written)


def _compute_side(
    session: HelperSession,
    func: OpOverload | None,
    impl: Callable[..., Any],
    leaves: list[Any],
    spec: Any,
    pair_shares: dict[int, torch.Tensor],
    written: set[int],
) -> Any:
    view = session.view
    assert view is not None
    view_leaves = list(leaves)
    for k, x in enumerate(leaves):
        if not isinstance(x, MPCTensor):
            continue
        share = pair_shares.get(k, x._share)
        v = MPCTensor(share, view, dtype=x.dtype, public=x.public_value())
        if k not in pair_shares and x.stashed(PAIR_KEY):
            # the same 2-party sharing: its protocol by-products still hold on the view
            for key, value in _valid_stash(x).items():
                if key != PAIR_KEY:
                    v.stash(key, value)
        view_leaves[k] = v
    view_args, view_kwargs = tree_unflatten(view_leaves, spec)
    # Writes the schema does not declare (native_batch_norm's running stats) show in versions.
    before = {
        k: (v._alias.version, v._share._version)
        for k, v in enumerate(view_leaves)
        if isinstance(v, MPCTensor)
    }
    try:
        out = impl(*view_args, **view_kwargs)
    except Exception as exc:
        session.done({"error": type(exc).__name__, "message": str(exc)}, [])
        raise
    out_leaves, out_spec = tree_flatten(out)
    by_view = {id(v): k for k, v in enumerate(view_leaves) if isinstance(v, MPCTensor)}
    notes: list[dict[str, Any]] = []
    public: list[torch.Tensor] = []
    results: list[Any] = []
    for leaf in out_leaves:
        if isinstance(leaf, MPCTensor) and id(leaf) in by_view:
            notes.append({"k": "input", "i": by_view[id(leaf)]})
            results.append(leaves[by_view[id(leaf)]])
        elif isinstance(leaf, MPCTensor) and leaf.public_value() is not None:
            value = leaf.public_value()
            assert value is not None
            notes.append({"k": "public"})
            public.append(value)
            results.append(MPCTensor(leaf._share, session.party, dtype=leaf.dtype, public=value))
        elif isinstance(leaf, MPCTensor):
            notes.append(
                {
                    "k": "secret",
                    "shape": list(leaf.shape),
                    "stride": list(leaf._share.stride()),
                    "dtype": str(leaf.dtype),
                    "grad": leaf.requires_grad,
                }
            )
            results.append(_lift(leaf, session.party))
        elif isinstance(leaf, torch.Tensor):
            notes.append({"k": "plain"})
            public.append(leaf)
            results.append(leaf)
        elif leaf is None or isinstance(leaf, (bool, int, float, str)):
            notes.append({"k": "value", "v": leaf})
            results.append(leaf)
        else:
            error = UnsupportedOperationError(
                f"party {session.party.rank}: {func or impl} returned a {type(leaf).__name__}, which "
                "the replicated bridge cannot pass to party 2"
            )
            session.done({"error": type(error).__name__, "message": str(error)}, [])
            raise error
    # In-place ops: the 2-party result goes back into the 3-party tensor they wrote.
    wrote: list[list[int]] = []
    for k, v in enumerate(view_leaves):
        if not isinstance(v, MPCTensor):
            continue
        if id(leaves[k]) not in written and before[k] == (v._alias.version, v._share._version):
            continue
        x = leaves[k]
        if v._share is not x._share:
            x._share.copy_(v._share)
        value = v.public_value()
        _mark_written(x, value)
        wrote.append([k, int(value is not None)])
        if value is not None:
            public.append(value)
    session.done({"tree": treespec_dumps(out_spec), "out": notes, "wrote": wrote}, public)
    return tree_unflatten(results, out_spec)


def _mark_written(x: MPCTensor, public: torch.Tensor | None) -> None:
    """After a bridged write: stale caches dropped; public again if the op made it public."""
    x.mark_written()
    if public is not None:
        x._pub, x._pub_version = public.to(x.dtype), x._alias.version
    else:
        x.stash(PAIR_KEY, True)


def bridged_function(
    override: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run a kept-whole torch-level call (``implements_function``) on the helper view.

    Such overrides call protocols directly and often build their own autograd node, so they run
    whole on the view. With gradients on, the bridged call is itself one autograd node
    (:class:`_BridgedCall`): its backward is a second bridged call in which parties 0 and 1
    back-propagate through the graph the override built on the view.
    """
    leaves, spec = tree_flatten((args, kwargs))
    slots = [k for k, x in enumerate(leaves) if isinstance(x, MPCTensor)]
    if not (torch.is_grad_enabled() and any(leaves[k].requires_grad for k in slots)):
        return _run_bridged(None, override, args, kwargs)
    call = _Call(override, leaves, spec, slots)
    flat = _BridgedCall.apply(call, *[leaves[k] for k in slots])  # type: ignore[no-untyped-call]
    return tree_unflatten(list(flat), call.out_spec)


class _Call:
    """The state one :class:`_BridgedCall` node shares between its forward and backward."""

    def __init__(
        self, override: Callable[..., Any], leaves: list[Any], spec: Any, slots: list[int]
    ) -> None:
        self.override = override
        self.leaves = leaves
        self.spec = spec
        self.slots = slots
        self.grad_slots = [leaves[k].requires_grad for k in slots]
        self.out_spec: Any = None
        self.view_inputs: list[MPCTensor] = []
        self.view_outputs: list[Any] = []

    def forward_on_view(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Parties 0 and 1: the override on view tensors, with its graph kept for backward."""
        view_leaves, spec = tree_flatten((args, kwargs))
        tensors = [x for x in view_leaves if isinstance(x, MPCTensor)]
        with torch.enable_grad():
            for v, wants in zip(tensors, self.grad_slots, strict=True):
                if wants:
                    v.requires_grad_(True)
            self.view_inputs = [v for v in tensors if v.requires_grad]
            a, k = tree_unflatten(view_leaves, spec)
            out = self.override(*a, **k)
        self.view_outputs, out_spec = tree_flatten(out)
        # The output's tree rides along as a string leaf: party 2 learns it from the note.
        flat = [x.detach() if isinstance(x, torch.Tensor) else x for x in self.view_outputs]
        return (*flat, treespec_dumps(out_spec))

    def backward_on_view(self, *grads: Any) -> tuple[Any, ...]:
        """Parties 0 and 1: the input gradients through the override's graph on the view."""
        pairs = [
            (o, g)
            for o, g in zip(self.view_outputs, grads, strict=True)
            if isinstance(o, torch.Tensor) and o.requires_grad and g is not None
        ]
        if not pairs or not self.view_inputs:
            return tuple(None for _ in self.view_inputs)
        return tuple(
            torch.autograd.grad(
                [o for o, _ in pairs],
                self.view_inputs,
                [g for _, g in pairs],
                allow_unused=True,
            )
        )


class _BridgedCall(torch.autograd.Function):
    """One autograd node for a bridged kept-whole call (see :func:`bridged_function`)."""

    @staticmethod
    def forward(ctx: Any, call: _Call, *tensors: MPCTensor) -> tuple[Any, ...]:
        leaves = list(call.leaves)
        for k, t in zip(call.slots, tensors, strict=True):
            leaves[k] = t
        a, kw = tree_unflatten(leaves, call.spec)
        *flat, spec = _run_bridged(None, call.forward_on_view, a, kw)
        ctx.call = call
        call.out_spec = treespec_loads(spec)
        return tuple(flat)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        call: _Call = ctx.call
        got = _run_bridged(None, call.backward_on_view, tuple(grads), {})
        # One gradient per forward input: the call state, then each tensor (None where its
        # input did not require one).
        it = iter(got)
        return (None, *[next(it) if wants else None for wants in call.grad_slots])


def pair_call(
    party: Party,
    fn: Callable[..., Any],
    arith: Sequence[torch.Tensor] = (),
    xor: Sequence[torch.Tensor] = (),
) -> Any:
    """Run a protocol on raw shares between parties 0 and 1, party 2 dealing.

    ``fn(view_party, *arith, *xor)`` receives the 2-party shares of the 3-party arithmetic
    sharings ``arith`` and XOR sharings ``xor`` (each reshared first) and returns a share tensor
    or a tuple of them; every party gets its share of each (zeros on party 2). For explicit
    protocol-level code under the replicated family (``BinaryMPCTensor``).
    """
    session = helper_session(party)
    paired = reshare_to_pair(list(xor), party, session.mask_prg, xor=True)
    tensors = [MPCTensor(s, party, dtype=torch.int64) for s in arith]
    for s in paired:
        t = MPCTensor(s, party, dtype=torch.int64)
        t.stash(PAIR_KEY, True)  # already moved (XOR-wise): the bridge must not move it again
        tensors.append(t)

    def on_view(*views: MPCTensor) -> Any:
        view = session.view
        out = fn(view, *[v._share for v in views])
        return tree_map(
            lambda t: MPCTensor(t, view, dtype=torch.int64) if isinstance(t, torch.Tensor) else t,
            out,
        )

    result = _run_bridged(None, on_view, tuple(tensors), {})
    return tree_map(lambda t: t._share if isinstance(t, MPCTensor) else t, result)


def _lift(leaf: MPCTensor, party: Party) -> MPCTensor:
    """A 2-party output of the view as a 3-party tensor (its stash kept, flagged as paired)."""
    out = MPCTensor(leaf._share, party, dtype=leaf.dtype, requires_grad=leaf.requires_grad)
    for key, value in _valid_stash(leaf).items():
        out.stash(key, value)
    out.stash(PAIR_KEY, True)
    return out


def _valid_stash(x: MPCTensor) -> dict[str, Any]:
    """``x``'s stashed by-products, unless a write since made them stale."""
    return dict(x._stash) if x._stash_version == x._alias.version else {}


_DTYPES = {str(d): d for d in (torch.float32, torch.int64, torch.bool)}


def _dealer_side(session: HelperSession, func: OpOverload | None, leaves: list[Any]) -> Any:
    note = session.serve()
    if "error" in note:
        raise _error(str(note.get("error")), str(note.get("message")), session.party.rank)
    try:
        out_spec = treespec_loads(str(note["tree"]))
        items = note["out"]
        assert isinstance(items, list)
    except (KeyError, AssertionError, ValueError, TypeError) as exc:
        raise ProtocolError(f"party 2: malformed bridge note for {func}: {exc}") from None
    results: list[Any] = []
    for item in items:
        kind = item.get("k")
        if kind == "input":
            results.append(leaves[int(item["i"])])
        elif kind == "secret":
            share = torch.empty_strided(
                tuple(item["shape"]), tuple(item["stride"]), dtype=torch.int64
            ).zero_()
            out = MPCTensor(
                share,
                session.party,
                dtype=_DTYPES[item["dtype"]],
                requires_grad=bool(item["grad"]),
            )
            out.stash(PAIR_KEY, True)
            results.append(out)
        elif kind == "public":
            value = session.receive_public()
            results.append(_public_tensor(value, session.party))
        elif kind == "plain":
            results.append(session.receive_public())
        elif kind == "value":
            results.append(item.get("v"))
        else:
            raise ProtocolError(f"party 2: unknown output kind {kind!r} in the bridge note")
    for k, is_public in note.get("wrote", []):  # type: ignore[attr-defined]
        x = leaves[int(k)]
        x._share.zero_()
        _mark_written(x, session.receive_public() if is_public else None)
    return tree_unflatten(results, out_spec)


def _public_tensor(value: torch.Tensor, party: Party) -> MPCTensor:
    # Party 2 is never party 0: its share of a public value is zero.
    dtype = value.dtype if value.dtype in (torch.int64, torch.bool) else torch.float32
    share = torch.zeros(value.shape, dtype=torch.int64)
    return MPCTensor(share, party, dtype=dtype, public=value.to(dtype))


def _error(name: str, message: str, rank: int) -> Exception:
    """Party 2's copy of the error parties 0 and 1 raised in a bridged op."""
    cls = getattr(errors, name, None) or getattr(builtins, name, None)
    text = f"party {rank}: parties 0 and 1 raised in a bridged op: {message}"
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(text)
        except TypeError:
            pass
    return ProtocolError(f"{text} ({name})")


_BRIDGE_HOOK.extend([bridged, bridged_function])

# Products run natively under the replicated family: local cross terms and one resharing round
# (protocols/replicated.py, reached through protocols/beaver.py), exact truncation with party 2
# dealing in-session; they never need the dealer-model protocols of the bridge. Their
# implementations call only products, truncations and local ops; anything else they reached
# would ask the family's NoDealer, which raises on every party alike.
register_native(
    [
        aten.mul.Tensor,
        aten.mul.Scalar,
        aten.mul_.Tensor,
        aten.mul_.Scalar,
        aten.addcmul.default,
        aten.addcmul_.default,
        aten.mm.default,
        aten.bmm.default,
        aten.matmul.default,
        aten.mv.default,
        aten.dot.default,
        aten.addmm.default,
        aten.baddbmm.default,
        aten.addmv.default,
        aten.convolution.default,
        aten.convolution_backward.default,
    ]
)


def _companion_of(x: MPCTensor) -> torch.Tensor | None:
    """The replicated companion of ``x``'s share (party 1's is ``x_2``), if recorded."""
    return x.party.companion(x._share)


register_companion(_companion_of)
