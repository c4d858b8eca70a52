"""Layer L5: ``with crypten_lite.profile() as p:`` — a per-op table of what encrypted ops cost.

Every top-level op on encrypted tensors inside the block is timed and charged with the
communication it caused (from the party's ``comm.stats``): rounds, bytes sent and received, and
seconds spent waiting for peers. Ops that torch runs for autograd appear under their own aten
names (``convolution_backward``, ``threshold_backward``). Communication outside any op (sharing
inputs, ``get_plain_text``) is reported as one ``(outside ops)`` row. Each party profiles its own
view; run the same block on every party.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils._pytree import tree_flatten

from crypten_lite.api import get_party, is_initialized
from crypten_lite.comm import OpStats
from crypten_lite.party import Party
from crypten_lite.tensor import MPCTensor, OpOverload, observe

__all__ = ["OpProfile", "Profile", "profile"]


@dataclass
class OpProfile:
    """Totals for one op name."""

    calls: int = 0
    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wait_s: float = 0.0
    seconds: float = 0.0


def _op_name(func: OpOverload) -> str:
    name = str(func)
    return name[: -len(".default")] if name.endswith(".default") else name


@dataclass
class Profile:
    """What :func:`profile` measured: ``rows`` by op name, in order of first call."""

    rows: dict[str, OpProfile] = field(default_factory=dict)
    party: Party | None = None

    # ----------------------------------------------------------------- observer protocol
    def before(self, func: OpOverload, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        party = self.party or _party_of(args, kwargs)
        if party is None:
            return None
        self.party = party
        return _copy(party.comm.stats.total), time.perf_counter()

    def after(
        self,
        token: Any,
        func: OpOverload,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
    ) -> None:
        if token is None or self.party is None:
            return
        start, t0 = token
        now = self.party.comm.stats.total
        row = self.rows.setdefault(_op_name(func), OpProfile())
        row.calls += 1
        row.rounds += now.rounds - start.rounds
        row.bytes_sent += now.bytes_sent - start.bytes_sent
        row.bytes_received += now.bytes_received - start.bytes_received
        row.wait_s += now.wait_s - start.wait_s
        row.seconds += time.perf_counter() - t0

    # ----------------------------------------------------------------- results
    @property
    def total(self) -> OpProfile:
        """Sum over every row."""
        out = OpProfile()
        for r in self.rows.values():
            out.calls += r.calls
            out.rounds += r.rounds
            out.bytes_sent += r.bytes_sent
            out.bytes_received += r.bytes_received
            out.wait_s += r.wait_s
            out.seconds += r.seconds
        return out

    def table(self, sort_by: str = "seconds") -> str:
        """A plain-text table, largest ``sort_by`` first (any :class:`OpProfile` field)."""
        rows = sorted(self.rows.items(), key=lambda kv: -getattr(kv[1], sort_by))
        head = (
            f"{'op':<44}{'calls':>7}{'rounds':>8}{'bytes out':>13}{'bytes in':>13}"
            f"{'wait s':>9}{'seconds':>9}"
        )
        lines = [head, "-" * len(head)]
        for name, r in [*rows, ("TOTAL", self.total)]:
            lines.append(
                f"{name:<44}{r.calls:>7}{r.rounds:>8}{r.bytes_sent:>13}{r.bytes_received:>13}"
                f"{r.wait_s:>9.4f}{r.seconds:>9.4f}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _copy(stats: OpStats) -> OpStats:
    out = OpStats()
    out.add(stats)
    return out


def _party_of(args: Any, kwargs: Any) -> Party | None:
    for leaf in tree_flatten((list(args), kwargs))[0]:
        if isinstance(leaf, MPCTensor) and leaf._party is not None:
            return leaf._party
    return None


@contextlib.contextmanager
def profile(party: Party | None = None) -> Iterator[Profile]:
    """Profile every op on encrypted tensors inside the block (this party's view).

    Example::

        with crypten_lite.profile() as p:
            loss = criterion(model(x), y)
            loss.backward()
        print(p.table())
    """
    if party is None and is_initialized():
        party = get_party()
    prof = Profile(party=party)
    start = _copy(party.comm.stats.total) if party is not None else None
    t0 = time.perf_counter()
    with observe(prof):
        yield prof
    wall = time.perf_counter() - t0
    if prof.party is not None and start is not None:
        now = prof.party.comm.stats.total
        inside = prof.total
        outside = OpProfile(
            calls=0,
            rounds=now.rounds - start.rounds - inside.rounds,
            bytes_sent=now.bytes_sent - start.bytes_sent - inside.bytes_sent,
            bytes_received=now.bytes_received - start.bytes_received - inside.bytes_received,
            wait_s=now.wait_s - start.wait_s - inside.wait_s,
            seconds=max(0.0, wall - inside.seconds),
        )
        if outside.rounds or outside.bytes_sent or outside.bytes_received:
            prof.rows["(outside ops)"] = outside
