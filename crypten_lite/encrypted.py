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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import crypten_lite.binary  # noqa: F401 - registers the A2B conversion
import crypten_lite.ops  # noqa: F401 - fills the op table
from crypten_lite.api import get_party
from crypten_lite.errors import ConfigurationError, EncodingError, ProtocolError
from crypten_lite.party import Party
from crypten_lite.protocols.sharing import share
from crypten_lite.tensor import MPCTensor, is_encrypted, ptype

_PType = ptype

__all__ = [
    "cryptensor",
    "decrypt_module",
    "encrypt_module",
    "is_encrypted",
    "load",
    "load_from_party",
    "save",
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


def encrypt_module(
    module: torch.nn.Module,
    src: int = 0,
    *,
    public: PublicSpec = None,
    nonpersistent_public: bool = True,
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

    1. Every party selects the public tensors: by default the non-persistent buffers (values
       derived from the configuration, not learned: rotary frequencies, attention masks,
       position ids), plus ``public``.
    2. ``src`` checks that its secret tensors are encodable and broadcasts one message: a
       status word and the public values (float64, exact for every float dtype).
    3. Every party raises if ``src``'s check failed (so invalid weights fail everywhere at
       once), copies the public values in place and secret-shares the rest (no messages).

    Args:
        public: qualified names (as in ``module.named_parameters()`` / ``named_buffers()``,
            e.g. ``["model.rotary_emb.inv_freq"]``) or a predicate ``(name, tensor) -> bool``
            evaluated on every party (it must select the same names everywhere: decide by
            name, not by value).
        nonpersistent_public: keep non-persistent buffers public (default ``True``).

    Security: public tensors are revealed to every party, by design: the default reveals
    what the model's configuration determines (for LLaMA, ``rope_theta`` and the head size,
    through ``inv_freq``), never learned weights. Pass ``nonpersistent_public=False`` when even
    that must stay secret.

    Cost: 1 round; ``8 * (1 + public elements)`` bytes from ``src`` to each peer.

    Raises:
        ConfigurationError: ``public`` names a tensor the module does not have.
        EncodingError: ``src``'s secret tensors hold NaN, inf or out-of-range values (on every
            party; ``src`` names the tensor).

    Returns:
        ``module`` (for chaining).
    """
    party = party or get_party()
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

    # Step 2: one broadcast carries src's status and the public values.
    sizes = [by_id[i].numel() for i in order if i in keep]
    payload: torch.Tensor | None = None
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
        parts = [torch.tensor([float(bad_pos)], dtype=torch.float64)]
        parts += [by_id[i].detach().reshape(-1).to(torch.float64) for i in order if i in keep]
        payload = torch.cat(parts)
    received = party.comm.broadcast(payload, src, "encrypt_module")
    if received.numel() != 1 + sum(sizes):
        raise ProtocolError(
            f"party {party.rank}: party {src} sent {received.numel() - 1} public values for "
            f"encrypt_module, this party's module has {sum(sizes)}: the modules differ"
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
    values = iter(torch.split(received[1:], sizes)) if sizes else iter(())
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
