"""Layer L2: correlated randomness from a dealer, seed-compressed.

Every item the dealer hands out (a Beaver triple, a truncation pair, ...) is a list of
*components*, each secret-shared arithmetically (sum mod 2**64), by XOR over int64 words, or as
XOR-shared single bits. *Free* components are uniformly random; *derived* components are
functions of them (``c = a * b``).

Seed compression: party ``i`` and the dealer share an AES-CTR stream (:mod:`crypten_lite.runtime.prg`).
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
  knows every party's masks and can unmask every opened value. No messages at all. Parties
  ``1..N-1`` draw only the free components and hold zero shares of the derived ones; party 0
  holds the derived values in full (no correction to compute).

Online cost. Party 0 of a dealer process sends requests without waiting and, by default,
*prefetches*: it predicts the next batches from the ones that followed the same batch before
and sends them ahead, so that their corrections are queued when the program asks
(:mod:`~crypten_lite.runtime.dealer.third_party`). An explicit offline phase (:mod:`~crypten_lite.runtime.dealer.plan`,
user API :mod:`crypten_lite.preprocessing`) records a run's requests, deals them in bulk
beforehand, and serves the online run with no dealer message at all.

Modules, lowest first: ``request`` (requests, component sharings, the dealer's store),
``arith_kinds`` (triples, truncation, conversion material, fixed operands) and ``bit_kinds``
(packed-bit correlations for comparisons, bit injection and AND), ``core`` (the kind table,
layouts, draw order, corrections), ``dealers`` (the :class:`Dealer` interface, batches, the
trusted first party), ``third_party`` (the dealer process, its wire format and prefetch),
``plan`` (recording, bulk preparation and in-order serving of a program's material). Import
from this package; the split is by family, not an API.
"""

from __future__ import annotations

from crypten_lite.runtime.dealer.bit_kinds import (
    AND_MAX_INPUTS,
    BIT_BLOCK,
    and_node_products,
    and_words,
    digits16,
    node_subsets,
    pack_bits,
    padded,
    pair_table,
    subset_products,
    unpack_bits,
)
from crypten_lite.runtime.dealer.bit_kinds import CMP_L2_E as CMP_L2_E
from crypten_lite.runtime.dealer.bit_kinds import CMP_L2_G as CMP_L2_G
from crypten_lite.runtime.dealer.bit_kinds import CMP_L3_G as CMP_L3_G
from crypten_lite.runtime.dealer.core import _KINDS as _KINDS
from crypten_lite.runtime.dealer.core import dealer_corrections as dealer_corrections
from crypten_lite.runtime.dealer.core import party_draw as party_draw
from crypten_lite.runtime.dealer.dealers import Dealer, TrustedFirstParty
from crypten_lite.runtime.dealer.dealers import DealerBatch as DealerBatch
from crypten_lite.runtime.dealer.plan import PlanMismatchError as PlanMismatchError
from crypten_lite.runtime.dealer.request import ARITH as ARITH
from crypten_lite.runtime.dealer.request import BIT as BIT
from crypten_lite.runtime.dealer.request import XOR as XOR
from crypten_lite.runtime.dealer.request import DealerRequest, DealerStore
from crypten_lite.runtime.dealer.request import Layout as Layout
from crypten_lite.runtime.dealer.request import Shape as Shape
from crypten_lite.runtime.dealer.third_party import TrustedThirdParty, serve_dealer

# `import *` exports these; the `X as X` imports above are importable from here too (protocols
# and tests use them) and explicitly re-exported for mypy.
__all__ = [
    "AND_MAX_INPUTS",
    "BIT_BLOCK",
    "Dealer",
    "DealerRequest",
    "DealerStore",
    "TrustedFirstParty",
    "TrustedThirdParty",
    "and_node_products",
    "and_words",
    "digits16",
    "node_subsets",
    "pack_bits",
    "padded",
    "pair_table",
    "serve_dealer",
    "subset_products",
    "unpack_bits",
]
