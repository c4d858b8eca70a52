"""Layer L2: the helper-dealer view of a 3-party session: parties 0 and 1 compute, party 2 deals.

The replicated family (issue 14) runs three parties and no dealer process. Ops that are not
local (comparisons, ReLU, max, every approximation; see :mod:`crypten_lite.bridge`) run
instead as the existing 2-party, dealer-model protocols between parties 0 and 1, with party 2
playing the dealer for them. This module builds that view once per session:

* :class:`ViewCommunicator` — the 3-party communicator seen as a 2-party session (ranks 0 and 1)
  whose dealer rank (2) is party 2. Ranks map to themselves, so the view shares the real
  communicator's per-pair sequence numbers and statistics: messages of bridged and native ops
  interleave on one numbered channel per pair, and the profile counts both.
* :class:`HelperSession` — per party: for parties 0 and 1, a :class:`~crypten_lite.runtime.party.Party`
  of world size 2 on the view, with a :class:`~crypten_lite.runtime.dealer.TrustedThirdParty` client
  talking to party 2 and the ``beaver`` family; for party 2, its dealer streams with parties 0
  and 1 and a dealer store kept across ops. All seeds come from
  :attr:`~crypten_lite.runtime.party.Party.bridge_seeds` (agreed at set-up, X25519 + HKDF, each bound to
  its own label).

Security (semi-honest, honest majority, one corruption):

* Party 2 sees the JSON requests (kinds and shapes: public, a function of the program) and, in
  the 3-to-2 resharing (:mod:`crypten_lite.protocols.helper_dealer`), only what it sends. It
  never receives a share or an opened value, so its view is simulated from the public shapes.
* Party 0 (or 1) sees exactly the transcript of a 2-party session with a dealer process that
  does not collude with it: party 2 is that dealer, and one corruption means it colludes with
  nobody. The 2-party protocols are secure in that model, so this view is simulatable too;
  party 1's extra message in the resharing is ``x_2 + r`` with ``r`` from a stream of parties 0
  and 2, uniform to party 1.
* No two parties may collude: parties 0 and 1 together hold the whole value, and party 2 with
  either one could unmask the openings. That is the honest-majority assumption of the family.
"""

from __future__ import annotations

import weakref

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.comm import Communicator
from crypten_lite.runtime.dealer import TrustedThirdParty
from crypten_lite.runtime.dealer.third_party import DealerState, send_done, serve_until_done
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.prg import PRG, fresh_seed
from crypten_lite.runtime.wire import Header

__all__ = ["HelperSession", "ViewCommunicator", "helper_session"]

DEALING_PARTY = 2
_PUBLIC_TAG = "bridge.public"


class ViewCommunicator(Communicator):
    """A 3-party communicator seen as 2 parties (ranks 0, 1) with a dealer (rank 2)."""

    def __init__(self, real: Communicator) -> None:
        if real.world_size != 3 or real.has_dealer:
            raise ValueError("the helper-dealer view needs a 3-party session without a dealer")
        super().__init__(
            real.rank,
            2,
            timeout_s=real.timeout_s,
            max_message_bytes=real.max_message_bytes,
            has_dealer=True,
        )
        self._real = real
        # One numbered channel per pair: bridged and native messages share the counters.
        self._sent_seq = real._sent_seq
        self._recv_seq = real._recv_seq
        self.stats = real.stats

    def _post(self, dst: int, header: bytes, payload: memoryview) -> None:
        self._real._post(dst, header, payload)

    def _fetch(self, src: int, timeout_s: float) -> tuple[Header, torch.Tensor] | None:
        return self._real._fetch(src, timeout_s)

    def _round_done(self) -> None:
        self._real._round_done()


class HelperSession:
    """One party's side of the helper-dealer view (module docstring).

    Attributes:
        party: the real 3-party party.
        view: parties 0 and 1: the 2-party party on the view (``None`` on party 2).
        mask_prg: parties 0 and 2: the stream that masks party 2's share in the resharing.
    """

    def __init__(self, party: Party) -> None:
        seeds = party.bridge_seeds
        if party.world_size != 3 or not seeds:
            raise ProtocolError(
                f"party {party.rank}: the helper-dealer bridge needs a 3-party session set up "
                "with protocol 'replicated'"
            )
        self.party = party
        self.comm = ViewCommunicator(party.comm)
        self.mask_prg = PRG(seeds["mask/0-2"]) if "mask/0-2" in seeds else None
        self.view: Party | None = None
        self._state: DealerState | None = None
        if party.rank == DEALING_PARTY:
            self._state = DealerState([PRG(seeds["dealer/0"]), PRG(seeds["dealer/1"])])
            return
        peer = 1 - party.rank
        self.view = Party(
            rank=party.rank,
            world_size=2,
            comm=self.comm,
            config=party.config.replace(protocol="beaver", dealer="ttp"),
            # No prefetch: a predicted batch must not cross the end of a bridged op.
            dealer=TrustedThirdParty(
                party.rank, 2, PRG(seeds[f"dealer/{party.rank}"]), self.comm, prefetch=False
            ),
            local_prg=PRG(fresh_seed()),
            _pair_prgs={peer: PRG(seeds["pair/0-1"])},
        )

    @property
    def is_dealer(self) -> bool:
        return self.party.rank == DEALING_PARTY

    def serve(self) -> dict[str, object]:
        """Party 2: deal for parties 0 and 1 until party 0 says the op is done; its note."""
        assert self._state is not None
        return serve_until_done(self.comm, self._state, idle_timeout_s=self.comm.timeout_s * 20)

    def done(self, note: dict[str, object], public: list[torch.Tensor]) -> None:
        """Party 0: end the op (the note describes its outputs), then send its public outputs.

        Public outputs are values parties 0 and 1 both know; party 2 needs them too.
        """
        assert self.view is not None
        if self.party.rank != 0:
            return
        send_done(self.view.dealer, note)  # type: ignore[arg-type]
        for value in public:
            self.party.comm.send(DEALING_PARTY, value.contiguous(), _PUBLIC_TAG)

    def receive_public(self) -> torch.Tensor:
        """Party 2: the next public output party 0 sent after its note."""
        return self.party.comm.recv(0, _PUBLIC_TAG)


_SESSIONS: weakref.WeakKeyDictionary[Party, HelperSession] = weakref.WeakKeyDictionary()


def helper_session(party: Party) -> HelperSession:
    """This party's :class:`HelperSession`, built on first use."""
    session = _SESSIONS.get(party)
    if session is None:
        session = _SESSIONS[party] = HelperSession(party)
    return session
