"""Layer L5: making, storing and unmaking encrypted tensors and models.

CrypTen's names: :func:`cryptensor` secret-shares a party's tensor, :func:`load_from_party` a
party's file, :func:`encrypt_module` a whole ``torch.nn.Module`` (parameters and buffers, in
place). :func:`save`/:func:`load` store *this party's shares* in a safetensors file (never pickle)
with a header that names the party, the session shape and the encoding, so a share file cannot be
loaded into the wrong slot unnoticed.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import crypten_lite.binary  # noqa: F401 - registers the A2B conversion
import crypten_lite.ops  # noqa: F401 - fills the op table
from crypten_lite.api import get_party
from crypten_lite.errors import ConfigurationError, EncodingError, ProtocolError
from crypten_lite.ops._fixed import release_fixed_operands
from crypten_lite.protocols.sharing import share
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, is_encrypted, ptype

_PType = ptype

__all__ = [
    "FoldedBatchNorm",
    "cryptensor",
    "decrypt_module",
    "encrypt_module",
    "is_encrypted",
    "load",
    "load_from_party",
    "save",
    "set_mask_reuse",
]

_FORMAT = "crypten_lite.shares/1"


def cryptensor(
    tensor: Any = None,
    src: int = 0,
    *,
    requires_grad: bool = False,
    shape: tuple[int, ...] | None = None,
    ptype: ptype = ptype.arithmetic,
    party: Party | None = None,
) -> Any:
    """Secret-share party ``src``'s ``tensor`` among all parties (CrypTen's ``cryptensor``).

    Every party calls it; only ``src``'s ``tensor`` is used (the others may pass ``None`` or a
    placeholder). Unless every party passes the same ``shape``, ``src`` broadcasts the shape
    first (one small round).

    Args:
        tensor: real numbers (any float or integer dtype), encoded with ``f`` fractional bits.
            An invalid ``tensor`` on ``src`` fails on every party (``EncodingError`` on the
            others) when the shape is broadcast; see ``protocols.sharing.share`` for ``shape``.
        requires_grad: make the result an autograd leaf that requires grad.
        ptype: ``ptype.binary`` returns a XOR-shared ``BinaryMPCTensor`` instead.

    Returns:
        An :class:`~crypten_lite.tensor.MPCTensor` (float32 logical dtype).

    Raises:
        EncodingError: ``src``'s value cannot be encoded (NaN, infinite, ``|x| >= 2**(63-f)``),
            naming ``cryptensor``. Without ``shape`` every party raises (the shape announcement
            carries the failure). With ``shape`` no message is exchanged, so only ``src`` raises
            and the others learn it from the supervisor (the launcher, ``run_threads``), which
            stops them with :class:`~crypten_lite.errors.PartyFailedError`.
    """
    party = party or get_party()
    # share() checks src's input (None, a ragged list, NaN, an encrypted tensor...) and, when it
    # is invalid, makes every party raise, not only src.
    try:
        ring = share(tensor if party.rank == src else None, src, party, shape=shape)
    except EncodingError as exc:
        detail = str(exc).split(": ", 1)[1] if str(exc).startswith("party ") else str(exc)
        raise EncodingError(
            f"party {party.rank}: cryptensor (input of party {src}): {detail}"
        ) from None
    out = MPCTensor(ring, party, requires_grad=requires_grad)
    if ptype == _PType.binary:
        return out.to_binary()
    return out


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point()


PublicSpec = Iterable[str] | Callable[[str, torch.Tensor], bool] | None


def _public_names(
    module: torch.nn.Module, public: PublicSpec, nonpersistent_public: bool, party: Party
) -> set[str]:
    """Qualified names (``layers.0.self_attn.rotary_emb.inv_freq``) of the tensors kept public."""
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters(remove_duplicate=False))
    tensors.update(module.named_buffers(remove_duplicate=False))
    chosen: set[str] = set()
    if nonpersistent_public:
        for prefix, sub in module.named_modules(remove_duplicate=False):
            for name in sub._non_persistent_buffers_set:
                chosen.add(f"{prefix}.{name}" if prefix else name)
    if callable(public):
        chosen.update(name for name, t in tensors.items() if public(name, t))
    elif public is not None:
        if isinstance(public, str):
            public = [public]
        names = set(public)
        unknown = sorted(names - set(tensors))
        if unknown:
            raise ConfigurationError(
                f"party {party.rank}: encrypt_module(public=...): no parameter or buffer named "
                f"{unknown} "
                f"(names as in module.named_parameters() / named_buffers())"
            )
        chosen |= names
    return chosen


def _encodable(t: torch.Tensor, frac_bits: int) -> bool:
    """Whether share() will accept ``t`` (finite, inside the fixed-point range)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    limit = 2.0 ** (63 - frac_bits)
    values = t.detach().to(torch.float64)
    return bool(torch.isfinite(values).all()) and float(values.abs().max()) < limit


# --------------------------------------------------------------------------- BatchNorm folding

# Which layers a BatchNorm of each dimension may be folded into: the layer's output channels
# must be the BatchNorm's channel axis (dim 1). A convolution's output always has its channels
# on dim 1; a Linear's output has its features last, which is dim 1 only for a 2-D input, so
# that fold checks the input rank when it runs (FoldedBatchNorm).
_FOLD_INTO: dict[type[torch.nn.Module], tuple[type[torch.nn.Module], ...]] = {
    torch.nn.BatchNorm1d: (torch.nn.Conv1d, torch.nn.Linear),
    torch.nn.BatchNorm2d: (torch.nn.Conv2d,),
    torch.nn.BatchNorm3d: (torch.nn.Conv3d,),
}


_TRACE_LOCK = threading.Lock()


class FoldedBatchNorm(torch.nn.Module):
    """What an eval-mode BatchNorm becomes once folded into the layer before it: the identity.

    Args:
        into: the qualified name of the layer that now carries the normalisation.
        features_last: the layer is a ``Linear``; the fold is exact only when its output is
            ``(batch, features)`` (BatchNorm1d normalises dim 1), so other ranks raise.
    """

    def __init__(self, into: str, features_last: bool = False) -> None:
        super().__init__()
        self.into = into
        self.features_last = features_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.features_last and x.dim() != 2:
            # Shapes are public and equal on every party, so every party raises here.
            raise ConfigurationError(
                f"a BatchNorm1d folded into the Linear `{self.into}` got a {x.dim()}-D input: "
                "the fold is exact only for (batch, features) inputs; encrypt the model with "
                "encrypt_module(..., fold_batchnorm=False)"
            )
        return x

    def extra_repr(self) -> str:
        return f"folded into {self.into}"


def _fold_pairs(module: torch.nn.Module, public_names: set[str]) -> list[tuple[str, str]]:
    """``(layer, batchnorm)`` qualified names whose BatchNorm can be folded into the layer.

    Only when sure: the BatchNorm is in eval mode with running statistics; torch.fx traces the
    model; the layer (a convolution, or a Linear for BatchNorm1d) and the BatchNorm are each
    called exactly once, the layer's output feeds only the BatchNorm, which takes nothing
    else; neither module is shared, hooked, partly encrypted or read as an attribute by the
    traced code; none of their tensors is tied elsewhere or chosen public.
    """
    # A cheap filter first: an eval BatchNorm registered right after a layer it could fold
    # into (torchvision's and most models' order). Only then trace.
    candidates: set[str] = set()
    before: torch.nn.Module | None = None
    for name, m in module.named_modules():
        if (
            type(m) in _FOLD_INTO
            and type(before) in _FOLD_INTO[type(m)]
            and not m.training
            and isinstance(m.running_mean, torch.Tensor)
            and isinstance(m.running_var, torch.Tensor)
        ):
            candidates.add(name)
        if not isinstance(m, (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)):
            before = m
    if not candidates:
        return []
    try:
        # Tracing patches torch.nn.Module.__call__ process-wide: one trace at a time (parties
        # as threads), and encrypt_module's exchange keeps every party from running a model
        # before the others have traced.
        with _TRACE_LOCK:
            graph = torch.fx.symbolic_trace(module).graph
    except Exception as exc:  # noqa: BLE001 - tracing runs model code; any failure = unsure
        warnings.warn(
            f"encrypt_module: BatchNorm layers not folded: torch.fx cannot trace "
            f"{type(module).__name__} ({type(exc).__name__}); pass fold_batchnorm=False to "
            "silence this",
            RuntimeWarning,
            stacklevel=3,
        )
        return []
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    read = [str(n.target) for n in graph.nodes if n.op == "get_attr"]
    module_uses = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    tensor_uses = Counter(
        id(t)
        for _, sub in module.named_modules(remove_duplicate=False)
        for t in [*sub._parameters.values(), *sub._buffers.values()]
        if t is not None
    )
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in candidates:
            continue
        bn_name = str(node.target)
        if len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        prev = node.args[0]
        if prev.op != "call_module" or len(prev.users) != 1:
            continue
        layer_name = str(prev.target)
        layer, bn = module.get_submodule(layer_name), module.get_submodule(bn_name)
        if type(layer) not in _FOLD_INTO[type(bn)]:
            continue
        if calls[layer_name] != 1 or calls[bn_name] != 1:
            continue
        if module_uses[id(layer)] != 1 or module_uses[id(bn)] != 1:
            continue
        if any(r.startswith((f"{layer_name}.", f"{bn_name}.")) for r in read):
            continue
        if any(m._forward_hooks or m._forward_pre_hooks for m in (layer, bn)):
            continue
        own: list[tuple[str, torch.Tensor | None]] = [
            (f"{layer_name}.{k}", t) for k, t in layer._parameters.items()
        ]
        own += [(f"{bn_name}.{k}", t) for k, t in [*bn._parameters.items(), *bn._buffers.items()]]
        if any(
            t is not None and (is_encrypted(t) or tensor_uses[id(t)] != 1 or name in public_names)
            for name, t in own
        ):
            continue
        pairs.append((layer_name, bn_name))
    return pairs


def _tensor(module: torch.nn.Module, name: str) -> torch.Tensor | None:
    t = getattr(module, name, None)
    return t if isinstance(t, torch.Tensor) else None


def _fold(module: torch.nn.Module, layer_name: str, bn_name: str) -> None:
    """Fold the eval BatchNorm ``bn_name`` into ``layer_name`` and replace it by the identity.

    With ``s = gamma / sqrt(running_var + eps)`` per output channel, the BatchNorm of the
    layer's output ``W x + b`` is ``s (W x + b - mean) + beta = (s W) x + (s (b - mean) + beta)``:
    the layer gets weight ``s W`` (row ``c`` scaled by ``s_c``) and bias ``s (b - mean) + beta``.
    Computed in float64 and cast back: exact up to the rounding of the weights' dtype.
    """
    layer, bn = module.get_submodule(layer_name), module.get_submodule(bn_name)
    weight, bias = _tensor(layer, "weight"), _tensor(layer, "bias")
    var, mean = _tensor(bn, "running_var"), _tensor(bn, "running_mean")
    gamma, beta = _tensor(bn, "weight"), _tensor(bn, "bias")
    assert weight is not None and var is not None and mean is not None
    eps = getattr(bn, "eps", 1e-5)
    assert isinstance(eps, float)
    f64 = torch.float64
    with torch.no_grad():
        var, mean = var.to(f64), mean.to(f64)
        scale = (gamma.to(f64) if gamma is not None else 1.0) / torch.sqrt(var + eps)
        shift = beta.to(f64) if beta is not None else 0.0
        old_bias = bias.to(f64) if bias is not None else torch.zeros_like(var)
        new_weight = weight.to(f64) * scale.reshape(-1, *[1] * (weight.dim() - 1))
        new_bias = (old_bias - mean) * scale + shift
    grad = weight.requires_grad
    bias_grad = bias.requires_grad if bias is not None else grad
    layer.weight = torch.nn.Parameter(new_weight.to(weight.dtype), requires_grad=grad)
    layer.bias = torch.nn.Parameter(new_bias.to(weight.dtype), requires_grad=bias_grad)
    parent_name, _, local = bn_name.rpartition(".")
    parent = module.get_submodule(parent_name)
    folded = FoldedBatchNorm(layer_name, features_last=isinstance(layer, torch.nn.Linear))
    setattr(parent, local, folded)


def encrypt_module(
    module: torch.nn.Module,
    src: int = 0,
    *,
    public: PublicSpec = None,
    nonpersistent_public: bool = True,
    fold_batchnorm: bool = True,
    reuse_weight_masks: bool = True,
    party: Party | None = None,
) -> Any:
    """Secret-share ``src``'s parameters and floating buffers of ``module``, in place.

    Every party calls it with a module of the same architecture (only ``src``'s values are
    used; shapes come from each party's own module, so no shapes travel). Parameters stay
    ``nn.Parameter`` s with their ``requires_grad``; tied parameters stay tied. Integer buffers
    (``num_batches_tracked``) stay public, each party keeping its own.

    Public tensors. The model owner may keep chosen floating parameters and buffers *public*:
    they stay plain tensors, and every op that uses them only with other public values runs in
    the clear at no cost (LLaMA's rotary ``inv_freq``: the cos/sin of the positions then cost
    no rounds instead of a secure cos/sin per forward). ``src`` broadcasts their values in the
    clear, so every party holds ``src``'s values even if it built its module differently.

    BatchNorm folding (``fold_batchnorm``, default on). An eval-mode BatchNorm right after a
    convolution (or a Linear, for ``BatchNorm1d`` on ``(batch, features)``) is an affine map
    per channel with constants: every party folds it into that layer *before* encrypting, in
    plaintext (only ``src``'s values matter), so the encrypted model runs one layer where it
    ran two, and the running statistics are never encrypted (ResNet-18: 240 of its 335
    rounds per forward were BatchNorm). Exact up to the float rounding of the folded
    weights. The module changes: the layer's weight and bias hold the folded values (a
    bias appears if it had none) and the BatchNorm becomes a :class:`FoldedBatchNorm`
    (identity); ``state_dict`` keys change accordingly. Folded only when sure (torch.fx
    traces the model and the layer's output feeds only that BatchNorm; see
    :func:`_fold_pairs`); a model torch.fx cannot trace keeps its BatchNorms and warns.
    Put the model in eval mode before encrypting; pass ``fold_batchnorm=False`` to train it
    later or keep its structure.

    Weight mask reuse (``reuse_weight_masks``, default on): see
    :func:`crypten_lite.nn.reuse_weight_masks`. Each submodule's weights reuse their opened
    Beaver masks under ``torch.no_grad()`` or in eval mode, and not while trained.

    1. Every party folds the eval BatchNorms it is sure about (``fold_batchnorm``) and
       selects the public tensors: by default the non-persistent buffers (values derived
       from the configuration, not learned: rotary frequencies, attention masks, position
       ids), plus ``public``.
    2. ``src`` checks that its secret tensors are encodable and sends one message to each
       peer: a status word, its number of folds and the public values (float64, exact for
       every float dtype); the others send their number of folds.
    3. Every party raises if ``src``'s check failed (so invalid weights fail everywhere at
       once) or any party folded differently, copies the public values in place and secret-shares the
       rest (no messages).

    Args:
        public: qualified names (as in ``module.named_parameters()`` / ``named_buffers()``,
            e.g. ``["model.rotary_emb.inv_freq"]``) or a predicate ``(name, tensor) -> bool``
            evaluated on every party (it must select the same names everywhere: decide by
            name, not by value).
        nonpersistent_public: keep non-persistent buffers public (default ``True``).
        fold_batchnorm: fold eval-mode BatchNorms into the layer before them (default
            ``True``).
        reuse_weight_masks: reuse the weights' opened Beaver masks for inference (default
            ``True``; ``False`` opens each weight's mask with every product).

    Security: public tensors are revealed to every party, by design: the default reveals
    what the model's configuration determines (for LLaMA, ``rope_theta`` and the head size,
    through ``inv_freq``), never learned weights. Pass ``nonpersistent_public=False`` when even
    that must stay secret.

    Cost: 1 round; ``8 * (2 + public elements)`` bytes from ``src`` to each peer, 8 bytes from
    each other party to each peer.

    Raises:
        ConfigurationError: ``public`` names a tensor the module does not have.
        EncodingError: ``src``'s secret tensors hold NaN, inf or out-of-range values (on every
            party; ``src`` names the tensor).

    Returns:
        ``module`` (for chaining).
    """
    party = party or get_party()
    public_names = _public_names(module, public, nonpersistent_public, party)
    folds = _fold_pairs(module, public_names) if fold_batchnorm else []
    for layer_name, bn_name in folds:
        _fold(module, layer_name, bn_name)
    if folds:
        public_names = _public_names(module, public, nonpersistent_public, party)
    # Each distinct tensor once (tied weights), in a deterministic order every party shares.
    slots: list[tuple[dict[str, Any], str, int]] = []  # (owner's table, local name, tensor id)
    by_id: dict[int, torch.Tensor] = {}
    names: dict[int, list[str]] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for table, floats_only in ((sub._parameters, False), (sub._buffers, True)):
            for local, t in table.items():
                if t is None or is_encrypted(t) or (floats_only and not _is_float(t)):
                    continue
                slots.append((table, local, id(t)))
                by_id.setdefault(id(t), t)
                names.setdefault(id(t), []).append(f"{prefix}.{local}" if prefix else local)
    order = list(by_id)
    keep = {i for i in order if any(n in public_names for n in names[i])}

    # Step 2: one exchange carries src's status and public values, and every party's number
    # of folds (an exchange, not a broadcast: no party goes on before all have traced).
    sizes = [by_id[i].numel() for i in order if i in keep]
    payload = torch.tensor([float(len(folds))], dtype=torch.float64)
    if party.rank == src:
        # the position (+1) in ``order`` of the first secret tensor src cannot encode, or 0
        bad_pos = next(
            (
                k + 1
                for k, i in enumerate(order)
                if i not in keep and not _encodable(by_id[i], party.frac_bits)
            ),
            0,
        )
        parts = [torch.tensor([float(bad_pos), float(len(folds))], dtype=torch.float64)]
        parts += [by_id[i].detach().reshape(-1).to(torch.float64) for i in order if i in keep]
        payload = torch.cat(parts)
    got = party.comm.exchange(payload, "encrypt_module")
    received = payload if party.rank == src else got[src]
    if received.numel() != 2 + sum(sizes):
        raise ProtocolError(
            f"party {party.rank}: party {src} sent {received.numel() - 2} public values for "
            f"encrypt_module, this party's module has {sum(sizes)}: the modules differ"
        )
    for peer, theirs in got.items():
        their_folds = int(theirs[1] if peer == src else theirs[0])
        if their_folds != len(folds):
            raise ProtocolError(
                f"party {party.rank}: party {peer} folded {their_folds} BatchNorms in "
                f"encrypt_module, this party {len(folds)}: the modules (or their train/eval "
                "modes) differ"
            )
    pos = int(received[0])
    if pos:
        # the same architecture on every party: every party can name the tensor
        what = names[order[pos - 1]][0] if pos <= len(order) else f"#{pos}"
        raise EncodingError(
            f"party {party.rank}: encrypt_module: party {src}'s `{what}` cannot be encoded "
            "(NaN, inf or values out of the fixed-point range); nothing was encrypted"
        )

    # Step 3.
    done: dict[int, Any] = {}
    values = iter(torch.split(received[2:], sizes)) if sizes else iter(())
    for i in order:
        t = by_id[i]
        if i in keep:
            value = next(values).reshape(t.shape).to(t.dtype)
            if party.rank != src:
                with torch.no_grad():
                    t.copy_(value)
            done[i] = t
        else:
            ring = share(
                t.detach() if party.rank == src else None, src, party, shape=tuple(t.shape)
            )
            enc = MPCTensor(ring, party)
            is_param = isinstance(t, torch.nn.Parameter)
            done[i] = torch.nn.Parameter(enc, requires_grad=t.requires_grad) if is_param else enc
    for table, local, i in slots:
        table[local] = done[i]
    return set_mask_reuse(module, "auto" if reuse_weight_masks else "off")


# --------------------------------------------------------------------------- weight mask reuse

# Per module (an attribute, so deepcopy keeps it): "auto" (default), "on" or "off".
_REUSE_MODE = "_crypten_lite_mask_reuse"
_REUSE_HOOKED = "_crypten_lite_mask_hook"
_REUSE_MODES = ("auto", "on", "off")


def _set_reuse(p: MPCTensor, on: bool) -> None:
    """Let ``p``'s products reuse an opened Beaver mask (``ops._fixed``), or stop and release."""
    if on:
        if p._alias.fixed is None:
            p._alias.fixed = {}
    elif p._alias.fixed is not None:
        release_fixed_operands(p, p.party)


def _own_encrypted(module: torch.nn.Module) -> list[MPCTensor]:
    out: list[MPCTensor] = []
    for p in module._parameters.values():
        if isinstance(p, MPCTensor) and not p.is_fake:
            out.append(p)
    return out


def _reuse_pre_hook(module: torch.nn.Module, args: Any) -> None:
    """Before each forward of a module in ``auto`` mode: reuse its weights' masks unless the
    weight is being trained (grad enabled, module in train mode, weight requiring grad), when
    every step changes it and a stored mask would cost one extra round per use."""
    if module.__dict__.get(_REUSE_MODE, "auto") != "auto":
        return
    training = torch.is_grad_enabled() and module.training
    for p in _own_encrypted(module):
        _set_reuse(p, not (training and p.requires_grad))


def set_mask_reuse(module: torch.nn.Module, mode: str = "auto") -> torch.nn.Module:
    """Choose when the encrypted weights of ``module`` reuse an opened Beaver mask.

    ``auto`` (what :func:`encrypt_module` sets): at each forward of a submodule, its weights
    reuse their masks under ``torch.no_grad()`` or in eval mode, and not while they are
    trained. ``on``: always. ``off``: never; stored masks are released. See
    :func:`crypten_lite.nn.reuse_weight_masks`.
    """
    if mode not in _REUSE_MODES:
        raise ValueError(f"mask reuse mode must be one of {_REUSE_MODES}, got {mode!r}")
    for sub in module.modules():
        params = _own_encrypted(sub)
        if not params:
            continue
        if not sub.__dict__.get(_REUSE_HOOKED, False):
            sub.register_forward_pre_hook(_reuse_pre_hook)
            setattr(sub, _REUSE_HOOKED, True)
        setattr(sub, _REUSE_MODE, mode)
        if mode != "auto":
            for p in params:
                _set_reuse(p, mode == "on")
    return module


def _open(t: Any, dst: int | None) -> torch.Tensor | None:
    assert isinstance(t, MPCTensor)
    return t.get_plain_text(dst)


def decrypt_module(module: torch.nn.Module, dst: int | None = None) -> torch.nn.Module:
    """Open the encrypted parameters and buffers of ``module`` in place (inverse of
    :func:`encrypt_module`). With ``dst``, only that party learns them; the others keep theirs
    encrypted. Cost: one round per tensor."""
    done: dict[int, Any] = {}
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None or not is_encrypted(p):
                continue
            if id(p) not in done:
                plain = _open(p, dst)
                done[id(p)] = (
                    p if plain is None else torch.nn.Parameter(plain, requires_grad=p.requires_grad)
                )
            sub._parameters[name] = done[id(p)]
        for name, b in list(sub._buffers.items()):
            if b is None or not is_encrypted(b):
                continue
            if id(b) not in done:
                plain = _open(b, dst)
                done[id(b)] = b if plain is None else plain
            sub._buffers[name] = done[id(b)]
    return module


# --------------------------------------------------------------------------- share files


def save(obj: MPCTensor | Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write this party's shares to ``path`` (safetensors; no pickle).

    ``obj`` is one encrypted tensor or a mapping name -> tensor (a ``state_dict``), in which
    plain tensors are stored as public values. The file header records the format, this
    party's rank, the world size, ``f`` and each entry's logical dtype; :func:`load` checks
    them. Every party saves its own file.
    """
    single = isinstance(obj, torch.Tensor)
    items: Mapping[str, Any] = {"tensor": obj} if isinstance(obj, torch.Tensor) else obj
    party: Party | None = None
    tensors: dict[str, torch.Tensor] = {}
    kinds: dict[str, str] = {}
    for name, t in items.items():
        if is_encrypted(t):
            party = party or t.party
            tensors[name] = t.share.detach().contiguous().clone()
            kinds[name] = f"secret:{str(t.dtype).removeprefix('torch.')}"
        elif isinstance(t, torch.Tensor):
            tensors[name] = t.detach().contiguous().clone()
            kinds[name] = "public"
        else:
            raise TypeError(f"save: entry {name!r} is a {type(t).__name__}, not a tensor")
    party = party or get_party()
    meta = {
        "format": _FORMAT,
        "rank": str(party.rank),
        "world_size": str(party.world_size),
        "frac_bits": str(party.frac_bits),
        "single": "1" if single else "0",
        "kinds": json.dumps(kinds),
    }
    save_file(tensors, os.fspath(path), metadata=meta)


def load(path: str | os.PathLike[str], *, party: Party | None = None) -> Any:
    """Read a share file written by :func:`save` on this party.

    Raises:
        ConfigurationError: the file is not a share file, or belongs to another rank, world
            size or precision.
    """
    party = party or get_party()
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != _FORMAT:
        raise ConfigurationError(f"party {party.rank}: {path} is not a crypten_lite share file")
    for key, mine in (
        ("rank", party.rank),
        ("world_size", party.world_size),
        ("frac_bits", party.frac_bits),
    ):
        if meta.get(key) != str(mine):
            raise ConfigurationError(
                f"party {party.rank}: share file {path} was written with {key} {meta.get(key)}, "
                f"this party has {mine}"
            )
    kinds = json.loads(meta["kinds"])
    raw = load_file(os.fspath(path))
    out: dict[str, Any] = {}
    for name, kind in kinds.items():
        t = raw[name]
        if kind.startswith("secret:"):
            dtype = getattr(torch, kind.split(":", 1)[1])
            out[name] = MPCTensor(t, party, dtype=dtype)
        else:
            out[name] = t
    return out["tensor"] if meta.get("single") == "1" else out


def _read_plain(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".npy"):
        return {"tensor": torch.from_numpy(np.load(path, allow_pickle=False))}
    return load_file(path)


def load_from_party(
    path: str | os.PathLike[str] | None,
    src: int = 0,
    *,
    requires_grad: bool = False,
    party: Party | None = None,
) -> Any:
    """Party ``src`` reads a plaintext file and secret-shares its tensors (CrypTen's name).

    The file is a safetensors file (or a ``.npy`` array, read with ``allow_pickle=False``); the
    other parties pass any ``path`` (ignored). ``src`` broadcasts the names and shapes first.

    Returns:
        One :class:`MPCTensor` if the file holds one tensor, else a dict name -> tensor.
    """
    party = party or get_party()
    plain: dict[str, torch.Tensor] = {}
    header: torch.Tensor | None = None
    if party.rank == src:
        if path is None:
            raise ValueError(f"party {party.rank}: load_from_party needs a path on the source")
        plain = _read_plain(os.fspath(path))
        layout = json.dumps({k: list(v.shape) for k, v in plain.items()}).encode()
        header = torch.frombuffer(bytearray(layout), dtype=torch.uint8)
    size = party.comm.broadcast(
        None if header is None else torch.tensor([header.numel()]), src, "load_from_party.size"
    )
    if header is None:
        header = torch.zeros(int(size[0]), dtype=torch.uint8)
    header = party.comm.broadcast(header if party.rank == src else None, src, "load_from_party")
    layout_pub = json.loads(bytes(header.numpy()).decode())
    out = {
        name: cryptensor(
            plain.get(name), src, requires_grad=requires_grad, shape=tuple(shape), party=party
        )
        for name, shape in layout_pub.items()
    }
    return next(iter(out.values())) if len(out) == 1 else out
