"""Layer L2: a party of a session — rank, communicator, dealer, randomness and config.

:meth:`Party.setup` runs the start-up protocol every party executes once:

1. Agree on the session parameters: every party all-gathers a fingerprint (protocol version,
   world size, fixed-point precision, dealer kind, truncation mode, protocol family); any difference is a
   :class:`~crypten_lite.errors.ProtocolError` naming the party and the field.
2. Agree on pairwise seeds: every party all-gathers an ephemeral X25519 public key, and each
   pair derives a seed from their Diffie-Hellman secret (HKDF, bound to both public keys). The
   seeds key the AES-CTR streams used for pseudo-random zero sharing.
3. Agree on a seed with the dealer the same way (``ttp``), or let party 0 derive every party's
   dealer stream (``tfp``, insecure, tests only). Under the replicated family
   (``config.protocol == "replicated"``: exactly 3 parties, no dealer process) there is no
   dealer seed: products and truncation use the pairwise streams
   (:mod:`crypten_lite.protocols.replicated`) and ``party.dealer`` is a
   :class:`NoDealer` placeholder. The non-linear ops run between parties 0 and 1
   with party 2 dealing for them (:mod:`crypten_lite.runtime.helper`), from seeds each party derives
   from its pairwise secrets and keeps in :attr:`Party.bridge_seeds`.

Before step 1, each process lets the allocator keep freed tensor memory
(:func:`keep_freed_memory`), which halves the cost of large protocol steps.

Protocol functions take a ``Party`` explicitly; nothing here is global.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch.utils.weak import WeakIdKeyDictionary

from crypten_lite.config import Config
from crypten_lite.errors import (
    ConfigurationError,
    PartyFailedError,
    PartyTimeoutError,
    ProtocolError,
)
from crypten_lite.runtime.comm import Communicator, InProcessHub
from crypten_lite.runtime.dealer import (
    Dealer,
    DealerBatch,
    DealerRequest,
    TrustedFirstParty,
    TrustedThirdParty,
    serve_dealer,
)
from crypten_lite.runtime.prg import PRG, KeyPair, derive_seed, fresh_seed

__all__ = [
    "PROTOCOL_VERSION",
    "NoDealer",
    "Party",
    "dealer_setup",
    "keep_freed_memory",
    "run_threads",
]

PROTOCOL_VERSION = 1
_DEALER_CODES = {"ttp": 1, "tfp": 2}
_TRUNC_CODES = {"auto": 1, "local": 2, "dealer": 3}
_PROTOCOL_CODES = {"beaver": 1, "replicated": 2}
_FINGERPRINT_FIELDS = (
    "protocol version",
    "world size",
    "frac_bits",
    "dealer",
    "truncation",
    "protocol family",
)

T = TypeVar("T")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_tuned = False


def keep_freed_memory() -> bool:
    """Let glibc's allocator reuse freed tensor memory instead of returning it to the kernel.

    Protocols allocate and free many large tensors per op. By default glibc unmaps big blocks
    when they are freed (and trims the heap), so each new tensor page-faults its memory in again
    — a cost comparable to the arithmetic (measured: an 8 MB PRG draw took 3 ms instead of
    1.4 ms). This raises the mmap threshold to its maximum (32 MiB), turns off mmap for larger
    blocks too (``M_MMAP_MAX = 0``: past the threshold every 80 MB tensor of a 1e7-element op
    was mapped and faulted in afresh, which made such an op 23x a 1e6-element one instead of
    10x; ``x*y + x - y`` on 1e7 int64 took 981 ms against 152 ms without mmap), and sets the
    trim threshold to 1 GiB, once per process. A process then keeps the peak of its recent
    working set (up to 1 GiB of free heap top) mapped; freed blocks below the top of the heap
    are reused, not returned to the kernel. Returns whether the settings were applied (glibc
    on Linux only; elsewhere, or with another allocator preloaded, nothing changes).
    """
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = (
        bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
        and bool(mallopt(_M_MMAP_MAX, 0))
        and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    )
    _tuned = ok
    return ok


def _key_tensor(public: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(public), dtype=torch.uint8)


def _pair_context(lo_key: bytes, hi_key: bytes) -> bytes:
    return lo_key + hi_key


class NoDealer(Dealer):
    """``party.dealer`` under the replicated family, which has no dealer process.

    Native products and truncation (:mod:`crypten_lite.protocols.replicated`) need no dealer
    material; the protocol layer still asks for it through the Beaver-family call sequence
    (``arithmetic.bilinear``: ``dealer.request([triple, trunc])`` then ``beaver_online`` and
    ``truncate_dealer``, both of which branch to the replicated protocols before reading it).
    So :meth:`request` answers the kinds ``triple``, ``fixed_triple`` and ``trunc`` with empty
    placeholders, which nothing reads. Any other kind (a comparison's, a conversion's) is
    material that must come from the non-linear bridge (party 2 dealing to parties 0 and 1):
    asking this placeholder for it raises a :class:`ProtocolError` on every party alike.
    """

    PLACEHOLDER_KINDS = frozenset({"triple", "fixed_triple", "trunc"})

    def fetch(self, requests: Sequence[DealerRequest]) -> list[list[torch.Tensor]]:
        raise self._refuse(requests)

    def request(self, requests: Sequence[DealerRequest]) -> DealerBatch:
        if any(r.kind not in self.PLACEHOLDER_KINDS for r in requests):
            raise self._refuse(requests)
        empty: list[list[torch.Tensor]] = [[] for _ in requests]
        return DealerBatch(empty, [[] for _ in requests])

    def fixed_mask(self, shape: Sequence[int]) -> tuple[int, torch.Tensor]:
        raise self._refuse([DealerRequest("fixed_mask", {"shape": list(shape)})])

    def _refuse(self, requests: Sequence[DealerRequest]) -> ProtocolError:
        kinds = sorted({r.kind for r in requests})
        return ProtocolError(
            f"party {self.rank}: the replicated protocol family has no dealer; dealer material "
            f"{kinds} must come from the non-linear bridge (party 2 dealing to parties 0 and 1), "
            "which is not installed for this operation"
        )


@dataclass(eq=False)
class Party:
    """Everything a protocol function needs to know about this party.

    Attributes:
        rank: this party's index, ``0 .. world_size - 1``.
        world_size: number of parties N (the dealer not counted).
        comm: connection to the other parties (and the dealer).
        config: session settings, identical on every party (checked at set-up).
        dealer: source of correlated randomness.
        local_prg: this party's private randomness.
        bridge_seeds: under the replicated family, the seeds of the helper-dealer view by label
            (``pair/0-1``, ``dealer/0``, ``dealer/1``, ``mask/0-2``), only those this party
            holds; empty otherwise.
    """

    rank: int
    world_size: int
    comm: Communicator
    config: Config
    dealer: Dealer
    local_prg: PRG
    _pair_prgs: dict[int, PRG] = field(repr=False)
    # Replicated family: share tensor -> (its version when recorded, the companion share).
    # Keyed by the share tensor's identity, weakly: a new tensor (the result of any op that
    # does not propagate the companion) has none, and an in-place write to the share bumps
    # torch's version counter, which makes the recorded companion stale (see companion()).
    _companions: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary, repr=False)
    bridge_seeds: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"Party(rank={self.rank}, world_size={self.world_size}, dealer={type(self.dealer).__name__})"

    @property
    def frac_bits(self) -> int:
        return self.config.frac_bits

    @property
    def replicated(self) -> bool:
        """Whether this session runs the replicated family (3 parties, honest majority)."""
        return self.config.protocol == "replicated" and self.world_size == 3

    def companion(self, share: torch.Tensor) -> torch.Tensor | None:
        """The replicated companion ``x_{i+1}`` recorded for this party's share ``x_i``, if any.

        ``None`` when none was recorded for this very tensor, or when the share was written in
        place since (torch's version counter moved): a stale companion would make a silent
        wrong result, a missing one only costs a round to fetch it again.
        """
        entry = self._companions.get(share)  # type: ignore[no-untyped-call]
        if entry is None:
            return None
        try:
            version = share._version
        except RuntimeError:  # inference-mode tensors have no version counter
            return None
        if version != entry[0]:
            del self._companions[share]
            return None
        companion: torch.Tensor = entry[1]
        return companion

    def set_companion(self, share: torch.Tensor, companion: torch.Tensor) -> None:
        """Record ``companion`` (same shape) as the next party's share of ``share``'s value."""
        if companion.shape != share.shape:
            raise ValueError(
                f"party {self.rank}: companion of shape {tuple(companion.shape)} for a share "
                f"of shape {tuple(share.shape)}"
            )
        try:
            version = share._version
        except RuntimeError:  # no version counter, so no way to notice a later write
            return
        self._companions[share] = (version, companion)

    def pair_prg(self, peer: int) -> PRG:
        """The AES-CTR stream this party shares with ``peer``."""
        return self._pair_prgs[peer]

    def przs(self, shape: Sequence[int]) -> torch.Tensor:
        """A fresh pseudo-random sharing of zero, without messages.

        Party ``i`` returns ``sum_{j > i} G_ij - sum_{j < i} G_ij``, where ``G_ij`` is the next
        draw from the stream party ``i`` shares with ``j``; every draw appears once with ``+``
        and once with ``-`` across the parties, so the shares sum to 0 mod 2**64, while any
        N-1 parties see the missing share as uniformly random.
        """
        shape = tuple(shape)
        zero = torch.zeros(shape, dtype=torch.int64)
        for peer in range(self.world_size):
            if peer > self.rank:
                zero += self._pair_prgs[peer].random_int64(shape)
            elif peer < self.rank:
                zero -= self._pair_prgs[peer].random_int64(shape)
        return zero

    def close(self) -> None:
        """Release the dealer (tells a dealer process that this session is over)."""
        self.dealer.close()

    @classmethod
    def setup(cls, comm: Communicator, config: Config) -> Party:
        """Run the start-up protocol (module docstring) and return the ready party.

        Raises:
            ProtocolError: the parties disagree on a session parameter.
            PartyTimeoutError: a peer did not take part in time.
        """
        rank, n = comm.rank, comm.world_size
        if rank >= n:
            raise ValueError("Party.setup is for parties; the dealer runs dealer_setup")
        keep_freed_memory()
        fingerprint = torch.tensor(
            [
                PROTOCOL_VERSION,
                n,
                config.frac_bits,
                _DEALER_CODES[config.dealer],
                _TRUNC_CODES[config.truncation],
                _PROTOCOL_CODES[config.protocol],
            ],
            dtype=torch.int64,
        )
        for peer, theirs in enumerate(comm.all_gather(fingerprint, "setup.config")):
            if theirs.shape != fingerprint.shape:
                raise ProtocolError(
                    f"party {rank}: party {peer} sent a malformed session fingerprint"
                )
            for name, mine, other in zip(
                _FINGERPRINT_FIELDS, fingerprint.tolist(), theirs.tolist(), strict=True
            ):
                if mine != other:
                    raise ProtocolError(
                        f"party {rank}: party {peer} runs with {name} {other}, this party with {mine}"
                    )
        # After the fingerprint, so a party of another family fails there on every party alike.
        if config.protocol == "replicated" and (n != 3 or comm.has_dealer):
            raise ConfigurationError(
                f"party {rank}: the replicated protocol family runs exactly 3 parties and no "
                f"dealer process; this session has {n} parties"
                + (" and a dealer process (drop --dealer)" if comm.has_dealer else "")
            )

        keys = KeyPair()
        publics = [
            bytes(t.numpy()) for t in comm.all_gather(_key_tensor(keys.public), "setup.keys")
        ]
        pair_secrets: dict[int, bytes] = {}
        pair_prgs: dict[int, PRG] = {}
        for peer in range(n):
            if peer == rank:
                continue
            lo, hi = min(rank, peer), max(rank, peer)
            secret = keys.shared_secret(publics[peer])
            pair_secrets[peer] = secret
            pair_prgs[peer] = PRG(
                derive_seed(secret, f"pair/{lo}-{hi}", _pair_context(publics[lo], publics[hi]))
            )

        dealer: Dealer
        bridge_seeds: dict[str, bytes] = {}
        if config.protocol == "replicated":
            # No dealer process (checked above): party 2 deals for parties 0 and 1 (crypten_lite.runtime.helper). Each
            # seed is bound to its own label, so these streams never overlap the PRZS streams.
            dealer = NoDealer(rank, n)
            bridge_seeds = _bridge_seeds(rank, pair_secrets, publics)
        elif config.dealer == "ttp":
            if not comm.has_dealer:
                raise ProtocolError(
                    f"party {rank}: dealer 'ttp' needs a dealer process; start with "
                    "`crypten-lite launch --dealer` or choose dealer 'tfp' for tests"
                )
            comm.send(comm.dealer_rank, _key_tensor(keys.public), "setup.dealer_key")
            dealer_public = bytes(comm.recv(comm.dealer_rank, "setup.dealer_key").numpy())
            seed = derive_seed(
                keys.shared_secret(dealer_public),
                f"dealer/{rank}",
                _pair_context(publics[rank], dealer_public),
            )
            dealer = TrustedThirdParty(rank, n, PRG(seed), comm)
        else:
            own_seed = fresh_seed() if rank == 0 else derive_seed(pair_secrets[0], f"tfp/{rank}")
            streams = None
            if rank == 0:
                streams = [PRG(own_seed)] + [
                    PRG(derive_seed(pair_secrets[i], f"tfp/{i}")) for i in range(1, n)
                ]
            dealer = TrustedFirstParty(rank, n, PRG(own_seed), streams)
        return cls(
            rank=rank,
            world_size=n,
            comm=comm,
            config=config,
            dealer=dealer,
            local_prg=PRG(fresh_seed()),
            _pair_prgs=pair_prgs,
            bridge_seeds=bridge_seeds,
        )


def _bridge_seeds(rank: int, secrets: dict[int, bytes], publics: list[bytes]) -> dict[str, bytes]:
    """The seeds of the helper-dealer view this party holds (see :attr:`Party.bridge_seeds`).

    ``pair/0-1`` keys the view's pairwise stream of parties 0 and 1; ``dealer/i`` the dealer
    stream party 2 shares with party ``i``; ``mask/0-2`` the mask of the 3-to-2 resharing.
    """
    labels = {
        (0, 1): ["pair/0-1"],
        (0, 2): ["dealer/0", "mask/0-2"],
        (1, 2): ["dealer/1"],
    }
    seeds = {}
    for (lo, hi), names in labels.items():
        if rank not in (lo, hi):
            continue
        peer = hi if rank == lo else lo
        for name in names:
            seeds[name] = derive_seed(
                secrets[peer], f"bridge/{name}", _pair_context(publics[lo], publics[hi])
            )
    return seeds


def dealer_setup(comm: Communicator) -> list[PRG]:
    """The dealer's half of step 3 of :meth:`Party.setup`: one stream per party, by rank."""
    keep_freed_memory()
    keys = KeyPair()
    publics = [bytes(comm.recv(r, "setup.dealer_key").numpy()) for r in range(comm.world_size)]
    for r in range(comm.world_size):
        comm.send(r, _key_tensor(keys.public), "setup.dealer_key")
    return [
        PRG(derive_seed(keys.shared_secret(pk), f"dealer/{r}", _pair_context(pk, keys.public)))
        for r, pk in enumerate(publics)
    ]


def run_threads(
    fn: Callable[..., T],
    world_size: int,
    *,
    config: Config | None = None,
    args: Sequence[Any] = (),
    timeout_s: float = 120.0,
) -> list[T]:
    """Run ``fn(party, *args)`` as ``world_size`` parties in threads of this process.

    The in-process transport, for fast tests: with ``config.dealer == "ttp"`` a dealer thread
    serves correlated randomness as the dealer process would. If any party raises, the others
    are woken with :class:`PartyFailedError` and the first failure is re-raised here.

    Returns:
        Each party's return value, by rank.
    """
    config = config or Config(transport="inproc", dealer="tfp", timeout_s=30.0)
    with_dealer = config.dealer == "ttp" and config.protocol != "replicated"
    hub = InProcessHub(world_size, has_dealer=with_dealer)
    results: list[Any] = [None] * world_size
    errors: list[tuple[int, BaseException]] = []
    lock = threading.Lock()

    def fail(who: int, exc: BaseException) -> None:
        with lock:
            errors.append((who, exc))
        name = "the dealer" if who == world_size else f"party {who}"
        hub.abort(f"{name} failed: {type(exc).__name__}: {exc}")

    def party_main(rank: int) -> None:
        try:
            comm = hub.communicator(
                rank, timeout_s=config.timeout_s, max_message_bytes=config.max_message_bytes
            )
            party = Party.setup(comm, config)
            try:
                results[rank] = fn(party, *args)
            finally:
                party.close()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            fail(rank, exc)

    def dealer_main() -> None:
        try:
            comm = hub.communicator(
                world_size, timeout_s=config.timeout_s, max_message_bytes=config.max_message_bytes
            )
            serve_dealer(comm, dealer_setup(comm), idle_timeout_s=timeout_s)
        except BaseException as exc:  # noqa: BLE001
            fail(world_size, exc)

    threads = [
        threading.Thread(target=party_main, args=(r,), name=f"party-{r}", daemon=True)
        for r in range(world_size)
    ]
    if with_dealer:
        threads.append(threading.Thread(target=dealer_main, name="dealer", daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
        if t.is_alive():
            hub.abort("the test run timed out")
            raise PartyTimeoutError(f"{t.name} did not finish within {timeout_s:g} s")
    if errors:
        root = next((e for e in errors if not isinstance(e[1], PartyFailedError)), errors[0])
        raise root[1]
    return results
