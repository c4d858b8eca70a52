"""Layer L3: truncation — dividing a sharing by ``2**k`` after a fixed-point product.

A product of two values at scale ``2**f`` is at scale ``2**(2f)``; truncating by ``f`` bits
brings it back. Two methods:

* ``dealer`` (any number of parties): one round with a dealer-made truncation pair; error at
  most one unit in the last place, no failure probability, for ``|x| < 2**62``.
* ``local`` (2 parties only): each party shifts its own share; no messages, and a
  value-dependent failure probability ``(|x| + 2**k) / 2**64`` per element (SecureML).

``auto`` (the default of :class:`~crypten_lite.config.Config`) is ``dealer`` for every number of
parties: exact truncation everywhere. ``local`` is an explicit speed opt-in for 2 parties
(``CRYPTEN_LITE_TRUNCATION=local``), with the failure probability below.

Why not ``local`` by default with 2 parties (failure accounting at model scale, ``f = 16``):
a failing element is off by ``2**(64 - k)`` in the ring (``2**32`` in real units for
``k = f``): a silent, huge error. The expected number of failures of a pass is the sum of
``(|x| + 2**k) / 2**64`` over every truncated element, ``x`` the value at the truncated scale;
it bounds the probability that any element fails. Measured with
``benchmarks/truncation_audit.py`` (one BERT-base encoder layer, sequence 128, times 12):
a 12-layer BERT-base forward pass truncates ``2.4e7`` elements in user-level products (``Q``,
``K``, ``V``, projections, MLP, attention scores and weighted sums, LayerNorm's affine) and
``8.3e7`` inside the approximations (GeLU, softmax's exp and reciprocal, LayerNorm's rsqrt,
whose internal products reach ``2**44``). With ``local`` everywhere the pass expects ``3.8``
failures from the approximations alone (standard-normal inputs) and ``4.5e-3`` from the
user-level products, which grows in proportion to the activations: ``20`` at inputs of
standard deviation 100 (products up to ``2**56``). No local rule meets a ``1e-6`` per-pass
target (it would need every truncated ``|x| < 2**17``), so ``auto`` is exact everywhere. With
``dealer`` the failure probability is exactly 0 for every truncated ``|x| < 2**62``, i.e. any
product ``|x * y| < 2**(62 - 2f)`` (``2**30`` in real units at ``f = 16``, far above
activations of ``1e3`` whose products are near ``2**20``); beyond that the product no longer fits
the ring's headroom, which the domain report (:func:`crypten_lite.check_model`) lists before
a run. Cost: one round per truncation on its own (:func:`truncate_dealer`); where the truncated
value feeds another product its opening rides in that product's round instead
(:mod:`crypten_lite.protocols.fused`), so the approximations cost 1-3 rounds more than with
``local``, not twice as many (see the README's truncation paragraph).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crypten_lite.errors import ConfigurationError
from crypten_lite.protocols import replicated
from crypten_lite.protocols.beaver import material_parts
from crypten_lite.protocols.opening import open_shares
from crypten_lite.runtime.dealer import DealerBatch, DealerRequest
from crypten_lite.runtime.party import Party
from crypten_lite.runtime.ring import logical_rshift

__all__ = [
    "resolve_method",
    "truncate",
    "truncate_dealer",
    "truncate_local",
    "truncate_local_",
    "truncation_request",
]

Tensor = torch.Tensor
_METHODS = ("auto", "local", "dealer")
_SHIFT = 62  # dealer method: x + 2**62 is in [0, 2**63) for |x| < 2**62


def resolve_method(party: Party, method: str | None = None) -> str:
    """The concrete method (``local`` or ``dealer``) for ``method`` (default: the config's).

    ``auto`` resolves to ``dealer`` for every number of parties (exact; see the module
    docstring); ``local`` only when asked for explicitly.

    Raises:
        ConfigurationError: unknown method, or ``local`` with more than 2 parties.
    """
    m = party.config.truncation if method is None else method
    if m == "auto":
        # Exact for every world size: see the module docstring for why 2-party local
        # truncation is not a safe default at model scale.
        return "dealer"
    if m == "local":
        if party.world_size != 2:
            raise ConfigurationError(
                f"party {party.rank}: local truncation works for 2 parties only, this session "
                f"has {party.world_size}; use truncation 'dealer' or 'auto'"
            )
        return m
    if m == "dealer":
        return m
    raise ConfigurationError(
        f"party {party.rank}: truncation method must be one of {_METHODS}, got {m!r}"
    )


def _check_bits(bits: int, party: Party, limit: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 0 <= bits <= limit:
        raise ValueError(f"party {party.rank}: truncation bits must be in [0, {limit}], got {bits}")


def _check(x: Tensor, party: Party) -> None:
    if not isinstance(x, Tensor) or x.dtype != torch.int64:
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"party {party.rank}: truncate takes an int64 share tensor, got {got}")


def truncate(
    x: Tensor, party: Party, bits: int | None = None, *, method: str | None = None
) -> Tensor:
    """Divide a sharing by ``2**bits`` (default ``party.frac_bits``), rounding to a neighbour.

    Dispatches to :func:`truncate_local` or :func:`truncate_dealer` (see their costs and error
    bounds); ``method`` overrides ``party.config.truncation``. ``bits == 0`` returns a copy.

    Raises:
        TypeError: ``x`` is not an int64 tensor.
        ValueError: ``bits`` out of range.
        ConfigurationError: unknown method, or ``local`` with more than 2 parties.
    """
    _check(x, party)
    k = party.frac_bits if bits is None else bits
    m = resolve_method(party, method)
    if m == "local":
        return truncate_local(x, party, k)
    _check_bits(k, party, _SHIFT)
    if k == 0:
        return x.clone()
    if party.replicated:  # party 2 deals in-session: protocols.replicated.truncate
        return replicated.truncate(x, party, k)
    batch = party.dealer.request([truncation_request(tuple(x.shape), k)])
    return truncate_dealer(x, party, k, batch)


def truncate_local(x: Tensor, party: Party, bits: int | None = None) -> Tensor:
    """Two-party local probabilistic truncation: each party shifts its own share.

    1. Party 0 returns ``[x]_0 >> k`` (arithmetic shift: ``floor([x]_0 / 2**k)``).
    2. Party 1 returns ``([x]_1 + 2**k - 1) >> k`` (``ceil([x]_1 / 2**k)``).

    Error: read the shares as signed integers. If ``[x]_0 + [x]_1`` does not overflow the
    signed range, the sum equals ``x`` and the result lies strictly between ``x / 2**k - 1`` and
    ``x / 2**k + 1``: ``floor`` or ``ceil`` of ``x / 2**k``, an error below one unit in the last
    place. It overflows with probability exactly ``|x| / 2**64`` when ``[x]_1`` is uniform
    (every share produced by a Beaver product or a sharing is), and step 2 wraps with
    probability ``2**k / 2**64``; so the failure probability is at most
    ``(|x| + 2**k) / 2**64``, i.e. about ``2**(l - 64)`` for ``|x| < 2**l``. A failure is off
    by ``2**(64 - k)`` (a huge value). Example: a product of two reals at ``f = 16`` with
    ``|x * y| < 2**10`` has ``|x| < 2**42`` in the ring: failure probability below ``2**-22``
    per element, per truncation. Over a model pass the failures add up (see the module
    docstring: a BERT-base forward pass expects several), which is why this method is an
    explicit opt-in (``CRYPTEN_LITE_TRUNCATION=local``), never the default.

    Cost: 0 rounds, no messages.
    Security: semi-honest, 2 parties; purely local, reveals nothing.
    Reference: Mohassel and Zhang, "SecureML", IEEE S&P'17, §4.1 and Theorem 1.

    Raises:
        ConfigurationError: the session does not have exactly 2 parties.
    """
    _check(x, party)
    if party.world_size != 2:
        raise ConfigurationError(
            f"party {party.rank}: local truncation works for 2 parties only, this session "
            f"has {party.world_size}"
        )
    k = party.frac_bits if bits is None else bits
    _check_bits(k, party, 63)
    if k == 0:
        return x.clone()
    if party.rank == 0:
        return x >> k
    out = x + ((1 << k) - 1)
    out >>= k
    return out


def truncate_local_(x: Tensor, party: Party, bits: int) -> Tensor:
    """:func:`truncate_local` in place, for a share the caller owns (a fresh product)."""
    if bits:
        if party.rank != 0:
            x += (1 << bits) - 1
        x >>= bits
    return x


def truncation_request(shape: tuple[int, ...], bits: int) -> DealerRequest:
    """The dealer request for :func:`truncate_dealer` (to batch it with a Beaver triple)."""
    return DealerRequest("trunc", {"shape": list(shape), "frac_bits": bits})


def truncate_dealer(
    x: Tensor,
    party: Party,
    bits: int | None = None,
    pair: DealerBatch | Sequence[Tensor] | None = None,
    *,
    tag: str = "trunc",
    index: int = 0,
) -> Tensor:
    """Exact-up-to-one-ulp truncation with a dealer pair, for any number of parties.

    With ``[r]`` uniform in Z_2^64, ``[r_hi] = [r >> k]`` (logical) and ``[r_msb] = [msb(r)]``:

    1. ``[x'] = [x] + 2**62`` (party 0 adds), so ``x' = x + 2**62`` lies in ``[0, 2**63)``.
    2. Open ``c = [x'] + [r]``.
    3. As integers ``x' + r = c + 2**64 * w``. Since ``x' < 2**63``, the wrap ``w`` is 1 exactly
       when ``msb(r) = 1`` and ``msb(c) = 0`` (if ``msb(r) = 1`` and nothing wrapped then
       ``c >= r >= 2**63``; if it wrapped then ``c < x' < 2**63``), so
       ``[w] = (1 - msb(c)) * [r_msb]``, linear in the shares.
    4. Writing ``c = c_hi * 2**k + c_lo`` and ``r = r_hi * 2**k + r_lo``,
       ``floor(x' / 2**k) = c_hi - r_hi + 2**(64-k) * w - borrow`` with
       ``borrow = [c_lo < r_lo]``. Return
       ``c_hi - 2**(62-k) - [r_hi] + 2**(64-k) * (1 - msb(c)) * [r_msb]``
       (party 0 adds the public terms), i.e. ``floor(x / 2**k) + borrow``.

    Error: the result is ``floor(x / 2**k)`` or ``floor(x / 2**k) + 1``, so
    ``|result - x / 2**k| < 1`` unit in the last place, for every ``|x| < 2**62``; no failure
    probability. (For a product at scale ``2f = 32`` that is any real ``|x * y| < 2**30``.)

    Args:
        pair: ``[r], [r_hi], [r_msb]`` for this shape and ``bits``, or item ``index`` of a
            :class:`~crypten_lite.runtime.dealer.DealerBatch` holding them (requested when ``None``);
            consumed (overwritten). ``[r_hi], [r_msb]`` are collected after the opening, so a
            dealer process's round trip overlaps with it.

    Cost: 1 round; each party sends ``8 * numel`` bytes to each of the ``N - 1`` peers (with a
    dealer process, party 0 also receives ``16 * numel`` bytes of corrections).
    Security: semi-honest, any ``N - 1`` colluding parties, dealer not colluding; ``r`` is
    uniform, so the opened ``c`` is uniform and independent of ``x``.
    Reference: the shift into a positive range and opening of ``x + r`` follow Catrina and
    Saxena, "Secure computation with fixed-point numbers", FC'10 (TruncPr); the dealer's
    ``(r, r >> k)`` pair is ABY3's truncation pair (Mohassel and Rindal, CCS'18, §5.1.1). The
    one-round wrap correction from ``msb(r)`` (step 3) is derived above; it replaces their
    statistical masking, so ``r`` may use the whole ring and there is no failure event.
    """
    _check(x, party)
    k = party.frac_bits if bits is None else bits
    _check_bits(k, party, _SHIFT)
    if k == 0:
        return x.clone()
    if party.replicated:  # same result and bound, party 2 dealing; ``pair`` is a placeholder
        return replicated.truncate(x, party, k, tag=tag)
    if pair is None:
        pair = party.dealer.request([truncation_request(tuple(x.shape), k)])
    (r,), derived = material_parts(pair, index, 1)
    if r.shape != x.shape:
        raise ValueError(
            f"party {party.rank}: truncation pair of shape {tuple(r.shape)} for a share of "
            f"shape {tuple(x.shape)}"
        )
    masked = x + r  # not into r: a dealer batch's free shares stay intact until item()
    if party.rank == 0:
        masked += 1 << _SHIFT
    opened = open_shares([masked], party, tag=tag)
    assert opened is not None
    c_pub = opened[0]
    r_hi, r_msb = derived()
    # (1 - msb(c)) * 2**(64-k), computed as ((c >> 63) + 1) << (64-k): c >> 63 is -1 or 0.
    weight = c_pub >> 63
    weight += 1
    weight <<= 64 - k
    out = r_msb.mul_(weight) if r_msb.is_contiguous() else r_msb * weight
    out -= r_hi
    if party.rank == 0:
        out += logical_rshift(c_pub, k)
        out -= 1 << (_SHIFT - k)
    return out
