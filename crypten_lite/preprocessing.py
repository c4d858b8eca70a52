"""Layer L5: an explicit offline phase — ``plan``, ``prepare``, then an online run with no dealer.

::

    p = crypten_lite.plan(model, example_input)   # records the dealer requests (a real run)
    p.prepare()                                    # the dealer deals all of them, in bulk
    with p.online():                               # served from this party's store:
        y = model(x)                               # zero dealer messages, zero dealer rounds

Every party calls each step (SPMD). :func:`plan` runs the program once on the example input (a
real run, with the session's dealer: it costs one ordinary execution) and records every dealer
request in order; the sequence depends only on shapes and settings, never on secret values, so
any input of the same shapes asks for the same material. :meth:`Plan.prepare` has the dealer deal
the whole sequence in a few large batches (:func:`crypten_lite.runtime.dealer.plan.prepare_material`;
a dealer process sends party 0 one correction per derived element, the other parties draw
locally). :meth:`Plan.online` serves the program from the store: a request that differs from the
plan raises :class:`~crypten_lite.runtime.dealer.plan.PlanMismatchError` on every party, and leaving the
block with material unused raises it too (the program ran less than it was planned for). A
prepared plan serves one online run; the store is emptied as it is used, so a mask is never
used twice, and a second run needs a fresh :meth:`Plan.prepare`.

Memory: the store holds this party's full shares of every item of the run (free and derived
components), e.g. ``3 * 8`` bytes per element of an elementwise product.

Fixed weight masks (:func:`crypten_lite.nn.reuse_weight_masks`): run the model once before
:func:`plan`, so that the masks exist; the plan then refers to them (a plan recorded on the pass
that makes them would make them again, and the online pass, which reuses them, would diverge).

Persistence: :meth:`Plan.save` writes this party's prepared store to a safetensors file (never
pickle) and :func:`load_plan` reads it back in a later session of the same shape; loading
deletes the file, so the same material cannot be loaded twice. Plans that create fixed masks
(masks the dealer keeps for the session) cannot be saved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from crypten_lite.api import get_party
from crypten_lite.errors import ConfigurationError
from crypten_lite.runtime.dealer import DealerRequest
from crypten_lite.runtime.dealer.plan import (
    PlanMismatchError,
    PreparedDealer,
    RecordingDealer,
    prepare_material,
    request_key,
)
from crypten_lite.runtime.party import Party

__all__ = ["Plan", "PlanMismatchError", "load_plan", "plan"]

_FORMAT = "crypten_lite.plan/1"


class Plan:
    """The dealer material of one run of a program: recorded, then prepared, then consumed.

    Attributes:
        requests: the dealer requests of one run, in order (prepared ones after
            :meth:`prepare`: fixed-mask handles renumbered).
        issued: items dealt into the store by :meth:`prepare` (or read by :func:`load_plan`).
        consumed: items handed to the program by the last :meth:`online` block.
    """

    def __init__(self, party: Party, requests: list[DealerRequest]) -> None:
        self._party = party
        self.requests = requests
        self._items: list[list[torch.Tensor]] | None = None
        self._id: list[int] = []
        self.issued = 0
        self.consumed = 0

    def __repr__(self) -> str:
        state = "prepared" if self._items is not None else "not prepared"
        return f"Plan({len(self.requests)} dealer items, {state}, party {self._party.rank})"

    @property
    def prepared(self) -> bool:
        return self._items is not None

    def prepare(self) -> None:
        """Have the dealer deal every recorded item now (every party calls it)."""
        if self._items is not None:
            raise PlanMismatchError(f"party {self._party.rank}: this plan is already prepared")
        self.requests, self._items = prepare_material(self._party.dealer, self.requests)
        self.issued, self.consumed = len(self._items), 0
        # An identity for this preparation, the same on every party (one small round, offline),
        # so that a later session refuses files of different preparations.
        party = self._party
        mine = party.local_prg.random_int64((2,)) if party.rank == 0 else None
        self._id = party.comm.broadcast(mine, 0, "plan.id").tolist()

    @contextmanager
    def online(self) -> Iterator[Plan]:
        """Serve the dealer requests of the block from the prepared store (no dealer messages).

        Raises:
            PlanMismatchError: the block asks for other material than prepared, or leaves some
                unused, or the plan is not prepared (on every party alike).
        """
        party = self._party
        if self._items is None:
            raise PlanMismatchError(
                f"party {party.rank}: the plan is not prepared (or was used already: prepared "
                "material serves one run; call prepare() again)"
            )
        served = PreparedDealer(party.dealer, self.requests, self._items)
        self._items = None  # the store now belongs to this block only
        party.dealer = served
        failed = True
        try:
            yield self
            failed = False
        finally:
            party.dealer = served.inner
            self.consumed = served.consumed
        if not failed and served.remaining:
            raise PlanMismatchError(
                f"party {party.rank}: the program used {served.consumed} of the plan's "
                f"{self.issued} dealer items: it diverged from its plan (the rest are dropped)"
            )

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` inside :meth:`online`."""
        with self.online():
            return fn(*args, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this party's prepared store to ``path`` (safetensors, mode 0600) and drop it
        here: the material then belongs to the file (see :func:`load_plan`)."""
        party = self._party
        if self._items is None:
            raise PlanMismatchError(f"party {party.rank}: only a prepared plan can be saved")
        if any(r.kind.startswith("fixed_") for r in self.requests):
            raise ConfigurationError(
                "a plan with fixed masks cannot be saved: the dealer keeps those for this "
                "session (encrypt the model with reuse_weight_masks=False to plan for a later "
                "session)"
            )
        tensors = {
            f"{i}.{j}": t.clone()  # own storage: replies are views of one buffer
            for i, item in enumerate(self._items)
            for j, t in enumerate(item)
        }
        meta = {
            "format": _FORMAT,
            "rank": str(party.rank),
            "world_size": str(party.world_size),
            "dealer": party.config.dealer,
            "id": json.dumps(self._id),
            "requests": json.dumps([request_key(r) for r in self.requests]),
        }
        fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        save_file(tensors, os.fspath(path), metadata=meta)
        self._items = None


def plan(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Plan:
    """Run ``fn(*args, **kwargs)`` and record the dealer material it uses.

    Every party calls it with inputs of the shapes the online run will have (the example input
    is really computed on: this run costs as much as any other). If that run opened weight
    masks (``fixed_mask``: ``encrypt_module`` reuses weight masks by default under ``no_grad``
    and in eval mode), later runs only use those masks and ask for other material, so the
    program is run and recorded once more: the plan holds the steady state. Every party sees
    the same requests and decides alike. Returns an unprepared :class:`Plan`.
    """
    party = get_party()
    requests = _record(party, fn, args, kwargs)
    if any(r.kind == "fixed_mask" for r in requests):
        requests = _record(party, fn, args, kwargs)
    return Plan(party, requests)


def _record(
    party: Party, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[DealerRequest]:
    recorder = RecordingDealer(party.dealer)
    party.dealer = recorder
    try:
        fn(*args, **kwargs)
    finally:
        party.dealer = recorder.inner
    return list(recorder.requests)


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """Read a prepared plan that :meth:`Plan.save` wrote (this party's file) and delete the file.

    Raises:
        ConfigurationError: the file is not a plan, or is another party's, or comes from a
            session of another shape.
    """
    party = get_party()
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ConfigurationError(f"{os.fspath(path)} is not a crypten_lite plan")
        if (meta.get("rank"), meta.get("world_size")) != (
            str(party.rank),
            str(party.world_size),
        ):
            raise ConfigurationError(
                f"party {party.rank}: {os.fspath(path)} holds party {meta.get('rank')}'s "
                f"material of a {meta.get('world_size')}-party session"
            )
        keys = json.loads(meta["requests"])
        requests = [DealerRequest.from_json(json.loads(k)) for k in keys]
        names = set(f.keys())
        items = []
        for i in range(len(requests)):
            item, j = [], 0
            while f"{i}.{j}" in names:
                item.append(f.get_tensor(f"{i}.{j}"))
                j += 1
            items.append(item)
    os.unlink(os.fspath(path))  # the material is now in memory only: it serves one run
    ident = torch.tensor(json.loads(meta.get("id", "[0, 0]")), dtype=torch.int64)
    if not all(torch.equal(ident, other) for other in party.comm.all_gather(ident, "plan.id")):
        raise ConfigurationError(
            f"party {party.rank}: the parties loaded plan files of different preparations"
        )
    loaded = Plan(party, requests)
    loaded._id = ident.tolist()
    loaded._items = items
    loaded.issued = len(items)
    return loaded
