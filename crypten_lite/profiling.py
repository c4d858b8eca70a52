"""Layer L5: ``with crypten_lite.profile() as p:`` — a per-op table of what encrypted ops cost.

Every top-level op on encrypted tensors inside the block is timed and charged with the
communication it caused (from the party's ``comm.stats``), split in two:

* online — the parties' own protocol: rounds, bytes sent and received between parties, and
  seconds spent waiting for other parties (``rounds``, ``bytes_sent``, ``bytes_received``,
  ``wait_s``);
* offline — correlated randomness fetched from the dealer process (``dealer_messages``,
  ``dealer_bytes_sent``, ``dealer_bytes_received``, ``dealer_wait_s``): with the dealer process
  party 0 makes these round trips while the program runs, other parties never do; with a
  trusted first party or material prepared ahead they are zero. ``online_s`` is an op's
  seconds less its dealer waits.

Papers quote the online columns; the offline ones say what preparing the material costs.
Ops that torch runs for autograd appear under their own aten names (``convolution_backward``,
``threshold_backward``). Communication outside any op (sharing inputs, ``get_plain_text``) is
reported as one ``(outside ops)`` row. Each party profiles its own view; run the same block on
every party.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch.utils._pytree import tree_flatten

from crypten_lite.api import get_party, is_initialized
from crypten_lite.runtime.comm import CommStats, OpStats
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor, OpOverload, observe

__all__ = ["OpProfile", "Profile", "profile"]


@dataclass
class OpProfile:
    """Totals for one op name: online (between parties) and offline (dealer link) apart."""

    calls: int = 0
    rounds: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    wait_s: float = 0.0
    seconds: float = 0.0
    dealer_messages: int = 0
    dealer_bytes_sent: int = 0
    dealer_bytes_received: int = 0
    dealer_wait_s: float = 0.0

    @property
    def online_s(self) -> float:
        """Seconds less the time spent waiting on the dealer."""
        return max(0.0, self.seconds - self.dealer_wait_s)

    def add(self, other: OpProfile) -> None:
        for name in _FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def charge(self, start: Mark, now: CommStats) -> None:
        """Add the communication since ``start`` (:func:`_mark` of the same counters)."""
        total0, d0 = start
        total, d = now.total, now.dealer
        # online = total less the dealer link (CommStats.parties, without building it)
        self.rounds += (total.rounds - total0.rounds) - (d.rounds - d0.rounds)
        self.bytes_sent += (total.bytes_sent - total0.bytes_sent) - (d.bytes_sent - d0.bytes_sent)
        self.bytes_received += (total.bytes_received - total0.bytes_received) - (
            d.bytes_received - d0.bytes_received
        )
        self.wait_s += (total.wait_s - total0.wait_s) - (d.wait_s - d0.wait_s)
        # a round trip to the dealer is one request sent (and one reply received)
        self.dealer_messages += (d.messages_sent + d.messages_received) - (
            d0.messages_sent + d0.messages_received
        )
        self.dealer_bytes_sent += d.bytes_sent - d0.bytes_sent
        self.dealer_bytes_received += d.bytes_received - d0.bytes_received
        self.dealer_wait_s += d.wait_s - d0.wait_s


_FIELDS = tuple(OpProfile.__dataclass_fields__)

# (total, dealer) counters of a party at one moment
Mark = tuple[OpStats, OpStats]


def _mark(stats: CommStats) -> Mark:
    total, dealer = OpStats(), OpStats()
    total.add(stats.total)
    dealer.add(stats.dealer)
    return total, dealer


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
        return _mark(party.comm.stats), time.perf_counter()

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
        row = self.rows.setdefault(_op_name(func), OpProfile())
        row.calls += 1
        row.charge(start, self.party.comm.stats)
        row.seconds += time.perf_counter() - t0

    # ----------------------------------------------------------------- results
    @property
    def total(self) -> OpProfile:
        """Sum over every row."""
        out = OpProfile()
        for r in self.rows.values():
            out.add(r)
        return out

    def table(self, sort_by: str = "seconds") -> str:
        """A plain-text table, largest ``sort_by`` first (any :class:`OpProfile` field).

        ``rounds`` to ``wait s`` are online (between parties); the ``dealer`` columns are the
        offline material's round-trip messages, bytes (both ways) and waits, shown only when
        the block talked to a dealer process.
        """
        rows = sorted(self.rows.items(), key=lambda kv: -getattr(kv[1], sort_by))
        total = self.total
        dealer = bool(total.dealer_messages)
        head = (
            f"{'op':<44}{'calls':>7}{'rounds':>8}{'bytes out':>13}{'bytes in':>13}"
            f"{'wait s':>9}{'seconds':>9}"
        )
        if dealer:
            head += f"{'dealer msgs':>12}{'dealer bytes':>14}{'dealer wait':>12}"
        lines = [head, "-" * len(head)]
        for name, r in [*rows, ("TOTAL", total)]:
            line = (
                f"{name:<44}{r.calls:>7}{r.rounds:>8}{r.bytes_sent:>13}{r.bytes_received:>13}"
                f"{r.wait_s:>9.4f}{r.seconds:>9.4f}"
            )
            if dealer:
                line += (
                    f"{r.dealer_messages:>12}"
                    f"{r.dealer_bytes_sent + r.dealer_bytes_received:>14}{r.dealer_wait_s:>12.4f}"
                )
            lines.append(line)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


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
    start = _mark(party.comm.stats) if party is not None else None
    t0 = time.perf_counter()
    with observe(prof):
        yield prof
    wall = time.perf_counter() - t0
    if prof.party is not None and start is not None:
        block = OpProfile(seconds=wall)
        block.charge(start, prof.party.comm.stats)
        inside = prof.total
        outside = OpProfile(
            **{name: getattr(block, name) - getattr(inside, name) for name in _FIELDS}
        )
        outside.calls = 0
        outside.seconds = max(0.0, outside.seconds)
        if (
            outside.rounds
            or outside.bytes_sent
            or outside.bytes_received
            or outside.dealer_messages
        ):
            prof.rows["(outside ops)"] = outside
