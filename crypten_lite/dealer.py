"""Layer L2: correlated randomness from a dealer, seed-compressed.

Every item the dealer hands out (a Beaver triple, a truncation pair, ...) is a list of
*components*, each secret-shared arithmetically (sum mod 2**64), by XOR over int64 words, or as
XOR-shared single bits. *Free* components are uniformly random; *derived* components are
functions of them (``c = a * b``).

Seed compression: party ``i`` and the dealer share an AES-CTR stream (:mod:`crypten_lite.prg`).
Party ``i`` draws its shares of every free component from that stream, and, for ``i > 0``, its
shares of the derived components too. The dealer draws the same streams, so it knows every
share, reconstructs the free values, computes the derived values and sends party 0 only the
*correction* ``derived - sum_{i>0} derived_i``. Dealer traffic is therefore one derived-size
tensor per item, to party 0 only (8 bytes per element of ``c`` for an elementwise triple), and
parties ``1..N-1`` never exchange a message with the dealer after set-up.

Two dealers:

* :class:`TrustedThirdParty` — a separate dealer process (``crypten-lite launch --dealer``). It
  never sees an input and must not collude with any party.
* :class:`TrustedFirstParty` — INSECURE, for tests and debugging: party 0 plays the dealer, so it
  knows every party's masks and can unmask every opened value. No messages at all.

Draw order is part of the protocol: for each item, party ``i`` draws its free components in
order, then (``i > 0``) its derived components in order.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from crypten_lite.comm import Communicator
from crypten_lite.errors import PartyTimeoutError, ProtocolError
from crypten_lite.prg import PRG
from crypten_lite.ring import bilinear, bilinear_output_shape, logical_rshift, msb

__all__ = [
    "Dealer",
    "DealerRequest",
    "TrustedFirstParty",
    "TrustedThirdParty",
    "serve_dealer",
]

ARITH, XOR, BIT = "arith", "xor", "bit"
Shape = tuple[int, ...]
_MAX_REQUEST_ELEMENTS = 1 << 31


@dataclass(frozen=True)
class DealerRequest:
    """One item of correlated randomness: a kind and its JSON-serialisable parameters."""

    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.params}

    @staticmethod
    def from_json(obj: Any) -> DealerRequest:
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
            raise ProtocolError(f"malformed dealer request {str(obj)[:80]!r}")
        params = {k: v for k, v in obj.items() if k != "kind"}
        return DealerRequest(obj["kind"], params)


@dataclass(frozen=True)
class _Kind:
    """How to lay out and derive one kind of item."""

    layout: Callable[[Mapping[str, Any]], tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]]
    derive: Callable[[Mapping[str, Any], list[torch.Tensor]], list[torch.Tensor]]


def _shape(params: Mapping[str, Any], key: str) -> Shape:
    value = params.get(key)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and d >= 0 for d in value
    ):
        raise ProtocolError(f"dealer request field {key!r} is not a shape: {value!r}")
    return tuple(value)


def _triple_layout(p: Mapping[str, Any]) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    a, b = _shape(p, "a_shape"), _shape(p, "b_shape")
    c = bilinear_output_shape(p["op"], a, b, p.get("op_params"))
    return [(a, ARITH), (b, ARITH)], [(c, ARITH)]


_KINDS: dict[str, _Kind] = {
    # Beaver triple for a bilinear op: [a], [b], [c = op(a, b)].
    "triple": _Kind(
        _triple_layout,
        lambda p, f: [bilinear(p["op"], f[0], f[1], p.get("op_params"))],
    ),
    # Square pair: [a], [a * a].
    "square": _Kind(
        lambda p: ([(_shape(p, "shape"), ARITH)], [(_shape(p, "shape"), ARITH)]),
        lambda p, f: [f[0] * f[0]],
    ),
    # Binary (AND) triple over int64 words: <a>, <b>, <a & b>.
    "binary_triple": _Kind(
        lambda p: (
            [(_shape(p, "shape"), XOR), (_shape(p, "shape"), XOR)],
            [(_shape(p, "shape"), XOR)],
        ),
        lambda p, f: [f[0] & f[1]],
    ),
    # Truncation pair: [r] uniform, [r >> f] (logical shift), [msb(r)] (see protocols).
    "trunc": _Kind(
        lambda p: (
            [(_shape(p, "shape"), ARITH)],
            [(_shape(p, "shape"), ARITH), (_shape(p, "shape"), ARITH)],
        ),
        lambda p, f: [logical_rshift(f[0], int(p["frac_bits"])), msb(f[0])],
    ),
    # edaBits over the full ring: <r> bitwise and [r] arithmetically, the same uniform r.
    "edabits": _Kind(
        lambda p: ([(_shape(p, "shape"), XOR)], [(_shape(p, "shape"), ARITH)]),
        lambda p, f: [f[0].clone()],
    ),
    # Random shared bits: <b> (one bit) and [b], b uniform in {0, 1}.
    "random_bits": _Kind(
        lambda p: ([(_shape(p, "shape"), BIT)], [(_shape(p, "shape"), ARITH)]),
        lambda p, f: [f[0].clone()],
    ),
}


def _layout(request: DealerRequest) -> tuple[list[tuple[Shape, str]], list[tuple[Shape, str]]]:
    kind = _KINDS.get(request.kind)
    if kind is None:
        raise ProtocolError(f"unknown dealer request kind {request.kind!r}")
    try:
        free, derived = kind.layout(request.params)
    except ProtocolError:
        raise
    except Exception as exc:  # noqa: BLE001 - bad op name or shapes from a peer
        raise ProtocolError(f"invalid dealer request {request.to_json()}: {exc}") from None
    total = sum(math.prod(s) for s, _ in free + derived)
    if total > _MAX_REQUEST_ELEMENTS:
        raise ProtocolError(f"dealer request of {total} elements is too large")
    return free, derived


def _draw(prg: PRG, shape: Shape, sharing: str) -> torch.Tensor:
    return prg.random_bits(shape) if sharing == BIT else prg.random_int64(shape)


def _combine(a: torch.Tensor, b: torch.Tensor, sharing: str) -> torch.Tensor:
    return a + b if sharing == ARITH else a ^ b


def _uncombine(total: torch.Tensor, part: torch.Tensor, sharing: str) -> torch.Tensor:
    return total - part if sharing == ARITH else total ^ part


def party_draw(
    prg: PRG, request: DealerRequest, rank: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The shares party ``rank`` draws itself: all free ones, and the derived ones if rank > 0."""
    free, derived = _layout(request)
    free_shares = [_draw(prg, s, k) for s, k in free]
    derived_shares = [] if rank == 0 else [_draw(prg, s, k) for s, k in derived]
    return free_shares, derived_shares


def dealer_corrections(
    prgs: Sequence[PRG], request: DealerRequest
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Replay every party's draws and compute party 0's derived shares.

    Args:
        prgs: the dealer's stream with each party, indexed by rank.

    Returns:
        (party 0's free shares, party 0's derived shares = the corrections).
    """
    free, derived = _layout(request)
    party0_free: list[torch.Tensor] = []
    totals: list[torch.Tensor] = []
    others: list[torch.Tensor] = [torch.zeros(s, dtype=torch.int64) for s, _ in derived]
    for rank, prg in enumerate(prgs):
        shares, rest = party_draw(prg, request, rank)
        if rank == 0:
            party0_free = shares
            totals = [t.clone() for t in shares]
        else:
            totals = [_combine(t, s, k) for t, s, (_, k) in zip(totals, shares, free, strict=True)]
            others = [_combine(o, s, k) for o, s, (_, k) in zip(others, rest, derived, strict=True)]
    values = _KINDS[request.kind].derive(request.params, totals)
    corrections = [
        _uncombine(v, o, k) for v, o, (_, k) in zip(values, others, derived, strict=True)
    ]
    return party0_free, corrections


class Dealer(ABC):
    """Source of correlated randomness for one party.

    ``fetch`` returns this party's shares of each requested item: free components, then derived
    components. Convenience methods name the common items.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size

    @abstractmethod
    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        """This party's shares of each request's components (free first, then derived)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Tell the dealer this party is done (party 0 of a dealer process)."""

    def get(self, kind: str, **params: Any) -> list[torch.Tensor]:
        return self.fetch([DealerRequest(kind, params)])[0]

    def triple(
        self, op: str, a_shape: Shape, b_shape: Shape, op_params: Mapping[str, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Beaver triple ``[a], [b], [c = op(a, b)]`` for a bilinear op of :mod:`~crypten_lite.ring`."""
        a, b, c = self.get(
            "triple",
            op=op,
            a_shape=list(a_shape),
            b_shape=list(b_shape),
            op_params=dict(op_params or {}),
        )
        return a, b, c

    def square(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``[a], [a*a]``."""
        a, a2 = self.get("square", shape=list(shape))
        return a, a2

    def binary_triple(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """XOR-shared ``<a>, <b>, <a & b>`` over int64 words."""
        a, b, c = self.get("binary_triple", shape=list(shape))
        return a, b, c

    def truncation_pair(
        self, shape: Shape, frac_bits: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[r], [r >> f] (logical), [msb(r)]`` with ``r`` uniform in Z_2^64."""
        r, r_hi, r_msb = self.get("trunc", shape=list(shape), frac_bits=frac_bits)
        return r, r_hi, r_msb

    def edabits(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``<r>`` (XOR words) and ``[r]`` (arithmetic) of the same uniform ``r``."""
        r_xor, r_arith = self.get("edabits", shape=list(shape))
        return r_xor, r_arith

    def random_bits(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``<b>`` (XOR of 0/1 values) and ``[b]`` of the same uniform bit ``b``."""
        b_xor, b_arith = self.get("random_bits", shape=list(shape))
        return b_xor, b_arith


class TrustedFirstParty(Dealer):
    """INSECURE dealer for tests and debugging: party 0 knows every party's dealer stream.

    Party 0 can therefore reconstruct every mask and unmask every opened value. Costs no
    messages. Never use it where party 0 must not learn the other parties' inputs.
    """

    def __init__(
        self, rank: int, world_size: int, own: PRG, all_streams: Sequence[PRG] | None
    ) -> None:
        super().__init__(rank, world_size)
        if rank == 0 and (all_streams is None or len(all_streams) != world_size):
            raise ValueError("party 0 of TrustedFirstParty needs every party's stream")
        self._own = own
        self._all = all_streams

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        out = []
        for request in requests:
            if self.rank == 0:
                assert self._all is not None
                free, derived = dealer_corrections(self._all, request)
            else:
                free, derived = party_draw(self._own, request, self.rank)
            out.append(free + derived)
        return out


_REQUEST_TAG = "dealer.request"
_REPLY_TAG = "dealer.reply"


def _encode_requests(requests: Sequence[DealerRequest]) -> torch.Tensor:
    raw = json.dumps([r.to_json() for r in requests], separators=(",", ":")).encode("utf-8")
    return (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )


def _decode_requests(tensor: torch.Tensor) -> list[DealerRequest]:
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        raise ProtocolError("dealer request must be a 1-d uint8 tensor of JSON")
    try:
        items = json.loads(bytes(tensor.numpy()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"dealer request is not valid JSON: {exc}") from None
    if not isinstance(items, list):
        raise ProtocolError("dealer request must be a JSON list")
    return [DealerRequest.from_json(item) for item in items]


class TrustedThirdParty(Dealer):
    """The client side of the dealer process (see the module docstring).

    Party 0 sends the batch of requests to the dealer and receives its corrections, one round
    trip; every other party draws everything locally and sends nothing.
    """

    def __init__(self, rank: int, world_size: int, own: PRG, comm: Communicator) -> None:
        super().__init__(rank, world_size)
        if not comm.has_dealer:
            raise ValueError("TrustedThirdParty needs a communicator connected to a dealer")
        self._own = own
        self._comm = comm
        self._closed = False

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        drawn = [party_draw(self._own, r, self.rank) for r in requests]
        if self.rank != 0:
            return [free + derived for free, derived in drawn]
        self._comm.send(self._comm.dealer_rank, _encode_requests(requests), _REQUEST_TAG)
        flat = self._comm.recv(self._comm.dealer_rank, _REPLY_TAG)
        out, offset = [], 0
        for request, (free, _) in zip(requests, drawn, strict=True):
            corrections = []
            for shape, _kind in _layout(request)[1]:
                n = math.prod(shape)
                corrections.append(flat[offset : offset + n].reshape(shape))
                offset += n
            out.append(free + corrections)
        if offset != flat.numel():
            raise ProtocolError(
                f"party 0: dealer reply has {flat.numel()} elements, expected {offset}"
            )
        return out

    def close(self) -> None:
        if self.rank == 0 and not self._closed:
            self._closed = True
            self._comm.send(
                self._comm.dealer_rank, _encode_requests([DealerRequest("shutdown")]), _REQUEST_TAG
            )


def serve_dealer(
    comm: Communicator, streams: Sequence[PRG], *, idle_timeout_s: float | None = None
) -> int:
    """Run the dealer: answer party 0's requests until it says ``shutdown``.

    Args:
        comm: the dealer's communicator (rank ``world_size``).
        streams: the dealer's PRG with each party, indexed by rank.
        idle_timeout_s: give up after this long without a request (``None``: wait forever; the
            launcher stops the dealer when the parties exit).

    Returns:
        The number of items served.
    """
    served = 0
    idle = 0.0
    while True:
        try:
            payload = comm.recv(0, _REQUEST_TAG)
        except PartyTimeoutError:
            idle += comm.timeout_s
            if idle_timeout_s is not None and idle >= idle_timeout_s:
                raise
            continue
        idle = 0.0
        requests = _decode_requests(payload)
        if any(r.kind == "shutdown" for r in requests):
            return served
        corrections = [c for r in requests for c in dealer_corrections(streams, r)[1]]
        flat = (
            torch.cat([c.reshape(-1) for c in corrections])
            if corrections
            else torch.empty(0, dtype=torch.int64)
        )
        comm.send(0, flat, _REPLY_TAG)
        served += len(requests)
