"""Layer L3: the documented domains and errors of the approximations and of the ring, as data.

One table, :data:`DOMAINS`, states for every approximation where its documented error holds
and what that error is; :data:`RING` states the fixed-point ring's headroom. The protocols'
docstrings (summarised in :mod:`crypten_lite.protocols.approximations`) and the two tools that
check a model against them read the same numbers, so they cannot disagree:

* :func:`crypten_lite.check_model` runs the model in plaintext on an example input and lists
  every place where an argument leaves its domain or a value leaves the ring's headroom;
* :func:`crypten_lite.debug` (``validate=True``) holds each approximation's result to the error
  stated here.

To change a domain or an error (a protocol was extended, a sweep measured a new bound), edit
the row here and the protocol's docstring; nothing else needs to change. The numbers are for
the default ``f = 16``; ``abs_ulps`` scale with ``2**-f``.

Errors are stated as ``abs_error + abs_ulps * 2**-f + rel_error * |exact|`` on the domain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "DOMAINS",
    "RING",
    "Domain",
    "RingLimits",
    "allowed_error",
    "local_truncation_failure",
]

Tensor = torch.Tensor


@dataclass(frozen=True)
class Domain:
    """Where an approximation meets its documented error, and that error.

    Attributes:
        name: the protocol (``exp``, ``inv_sqrt``, ...).
        lo, hi: the argument's documented range ``[lo, hi)``; ``None`` is unbounded.
        on_magnitude: the range bounds ``|x|`` (``reciprocal``), not ``x``.
        abs_error, abs_ulps, rel_error: the documented error on the domain,
            ``abs_error + abs_ulps * 2**-f + rel_error * |exact|``.
        max_row: the longest row the error holds for (``softmax``), ``None`` if any.
        where: the docstring that states it.
    """

    name: str
    lo: float | None
    hi: float | None
    abs_error: float = 0.0
    abs_ulps: float = 0.0
    rel_error: float = 0.0
    on_magnitude: bool = False
    max_row: int | None = None
    where: str = ""

    def inside(self, x: Tensor) -> Tensor:
        """Boolean mask of the elements of ``x`` (plaintext) inside ``[lo, hi)``."""
        v = x.abs() if self.on_magnitude else x
        ok = torch.ones_like(v, dtype=torch.bool)
        if self.lo is not None:
            ok &= v >= self.lo
        if self.hi is not None:
            ok &= v < self.hi
        return ok

    def describe(self) -> str:
        """The domain in words: ``[-16, 8)``, ``|x| in [2**-16, 2**16)``, ``all x``."""
        if self.lo is None and self.hi is None:
            text = "all x"
        else:
            lo = "-inf" if self.lo is None else _num(self.lo)
            hi = "inf" if self.hi is None else _num(self.hi)
            text = ("|x| in " if self.on_magnitude else "x in ") + f"[{lo}, {hi})"
        if self.max_row is not None:
            text += f", at most {self.max_row} per row"
        return text


@dataclass(frozen=True)
class RingLimits:
    """The fixed-point ring's headroom at ``f`` fractional bits (``Z_2^64``, signed).

    A value is representable when ``|x| < 2**(63 - f)``; a product truncated exactly (the
    default dealer truncation) needs ``|x * y| < 2**(62 - 2f)``; 2-party local truncation
    (opt-in) fails on an element with probability ``(|x * y| * 2**(2f) + 2**f) / 2**64``.
    """

    ring_bits: int = 64

    def value_limit(self, frac_bits: int) -> float:
        return 2.0 ** (self.ring_bits - 1 - frac_bits)

    def product_limit(self, frac_bits: int) -> float:
        return 2.0 ** (self.ring_bits - 2 - 2 * frac_bits)


RING = RingLimits()

_ULP16 = 2.0**-16

# The documented domains and errors (protocols/approximations.py's table, f = 16).
DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("exp", -16.0, 8.0, abs_ulps=2, rel_error=8.5e-5, where="protocols.elementary.exp"),
        Domain("log", _ULP16, 2.0**44, abs_error=3.4e-5, where="protocols.elementary.log"),
        Domain(
            "reciprocal",
            _ULP16,
            2.0**16,
            abs_ulps=2,
            rel_error=2.0e-5,
            on_magnitude=True,
            where="protocols.elementary.reciprocal",
        ),
        Domain(
            "div",
            _ULP16,
            2.0**44,
            abs_ulps=3,
            rel_error=2e-5,
            on_magnitude=True,
            where="protocols.elementary.div (the divisor)",
        ),
        Domain(
            "sqrt", 0.0, 2.0**44, abs_ulps=2, rel_error=1.2e-4, where="protocols.elementary.sqrt"
        ),
        Domain(
            "inv_sqrt",
            _ULP16,
            2.0**44,
            abs_ulps=2,
            rel_error=4.9e-5,
            where="protocols.elementary.inv_sqrt",
        ),
        Domain("sigmoid", None, None, abs_error=7e-5, where="protocols.activations.sigmoid"),
        Domain("tanh", None, None, abs_error=9.2e-5, where="protocols.activations.tanh"),
        Domain("erf", None, None, abs_error=3e-5, where="protocols.activations.erf"),
        Domain("gelu", None, None, abs_error=3.8e-5, where="protocols.activations.gelu"),
        Domain("silu", None, None, abs_error=1.2e-4, where="protocols.activations.silu"),
        Domain(
            "softmax",
            None,
            None,
            abs_error=8e-5,
            max_row=1024,
            where="protocols.softmax.softmax",
        ),
        Domain(
            "log_softmax",
            None,
            None,
            abs_error=1.3e-4,
            max_row=1024,
            where="protocols.softmax.log_softmax",
        ),
        # Batch statistics (protocols.moments.standardize) add eps at the fine stage's scale, so
        # any eps is exact there; running statistics (eval-mode BatchNorm) add it at scale f,
        # where an eps below one step encodes as 0.
        Domain("normalization_eps", 2.0**-16, None, where="ops.normalization (eval eps)"),
        Domain("sin", None, None, abs_error=2e-4, where="protocols.elementary.sin"),
        Domain("cos", None, None, abs_error=2e-4, where="protocols.elementary.cos"),
    )
}


def allowed_error(domain: Domain, exact: Tensor, frac_bits: int) -> Tensor:
    """The documented error bound of ``domain`` for each element of the ``exact`` result."""
    ulp = 2.0**-frac_bits
    return domain.abs_error + domain.abs_ulps * ulp + domain.rel_error * exact.abs()


def local_truncation_failure(products: Tensor, frac_bits: int) -> float:
    """Expected number of 2-party local truncation failures over ``products`` (real values).

    Each element ``p`` is truncated at scale ``2**(2f)``; it fails with probability
    ``(|p| * 2**(2f) + 2**f) / 2**64`` (see :func:`~crypten_lite.protocols.truncation.truncate_local`).
    The sum bounds the probability that any of them fails.
    """
    if products.numel() == 0:
        return 0.0
    p = products.detach().double().abs()
    return float(((p * 2.0 ** (2 * frac_bits) + 2.0**frac_bits) / 2.0**64).sum())


def _num(v: float) -> str:
    if v != 0 and abs(v) >= 1 and float(v).is_integer() and math.log2(abs(v)).is_integer():
        e = int(math.log2(abs(v)))
        return f"{'-' if v < 0 else ''}2**{e}" if e > 4 else f"{v:g}"
    if v != 0 and abs(v) < 1 and math.log2(abs(v)).is_integer():
        return f"2**{int(math.log2(abs(v)))}"
    return f"{v:g}"
