"""Layer L0: configuration as data.

One frozen dataclass holds every setting; :func:`config_from_env` is the only place in the
library that reads ``os.environ`` for settings. Nothing happens at import time.

Environment variables (all optional):

==============================  =========================================================
``CRYPTEN_LITE_FRAC_BITS``      fixed-point fractional bits ``f`` (default 16)
``CRYPTEN_LITE_TIMEOUT``        seconds to wait for any one message (default 60)
``CRYPTEN_LITE_RENDEZVOUS_TIMEOUT``  seconds to wait for all parties to arrive (default 60)
``CRYPTEN_LITE_TRANSPORT``      ``ipc`` or ``tcp`` between processes (default ``ipc``)
``CRYPTEN_LITE_DEALER``         ``ttp`` (dealer process) or ``tfp`` (party 0, tests only)
``CRYPTEN_LITE_TRUNCATION``     ``auto`` (= ``dealer``, exact), ``dealer`` or ``local`` (2 parties, opt-in)
``CRYPTEN_LITE_MAX_MESSAGE_BYTES``  largest frame a party accepts (default 4 GiB)
``CRYPTEN_LITE_MAX_QUEUED_BYTES``   payload bytes one peer may have waiting in a party's inbox
                                    (default 0: ``max_message_bytes``)
``CRYPTEN_LITE_PROTOCOL``       ``beaver`` (additive shares, dealer; default) or ``replicated`` (3 parties)
==============================  =========================================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from crypten_lite.errors import ConfigurationError

__all__ = ["Config", "config_from_env", "ENV_PREFIX"]

ENV_PREFIX = "CRYPTEN_LITE_"

_TRANSPORTS = ("inproc", "ipc", "tcp")
_DEALERS = ("ttp", "tfp")
_TRUNCATIONS = ("auto", "local", "dealer")
_PROTOCOLS = ("beaver", "replicated")


@dataclass(frozen=True)
class Config:
    """Settings shared by every party of a session.

    Attributes:
        frac_bits: fractional bits of the fixed-point encoding (``x -> round(x * 2**f)``).
        timeout_s: seconds a party waits for one expected message before
            :class:`~crypten_lite.errors.PartyTimeoutError`.
        rendezvous_timeout_s: seconds the launcher waits for every party to arrive.
        transport: ``inproc`` (threads, tests), ``ipc`` (same host) or ``tcp``.
        dealer: ``ttp`` (a separate dealer process) or ``tfp`` (party 0 deals; insecure).
        truncation: ``dealer`` (one round, any N, exact: no failure probability), ``local``
            (2 parties, no messages, fails with probability ``|x| / 2**64`` per element: an
            explicit speed opt-in) or ``auto`` (``dealer`` for every N; see
            :mod:`crypten_lite.protocols.truncation` for the failure accounting at model scale).
        max_message_bytes: frames announcing more payload than this are refused.
        max_queued_bytes: the most payload bytes one peer may have read ahead into this party's
            inbox (messages that arrived before the protocol asked for them). A peer past it
            ends the session with a clear error naming it, so a peer cannot make a party buffer
            an unbounded amount of memory. ``0`` (default) means ``max_message_bytes``: one
            largest message ahead. A local resource limit: parties may set different values.
        protocol: the protocol family: ``beaver`` (additive shares, products from dealer
            triples; any N) or ``replicated`` (2-out-of-3 replicated shares, honest majority,
            exactly 3 parties and no dealer process).
    """

    frac_bits: int = 16
    timeout_s: float = 60.0
    rendezvous_timeout_s: float = 60.0
    transport: str = "ipc"
    dealer: str = "ttp"
    truncation: str = "auto"
    max_message_bytes: int = 1 << 32
    protocol: str = "beaver"
    max_queued_bytes: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 30:
            raise ConfigurationError(f"frac_bits must be in [0, 30], got {self.frac_bits}")
        if not self.timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be positive, got {self.timeout_s}")
        if not self.rendezvous_timeout_s > 0:
            raise ConfigurationError(
                f"rendezvous_timeout_s must be positive, got {self.rendezvous_timeout_s}"
            )
        if self.transport not in _TRANSPORTS:
            raise ConfigurationError(
                f"transport must be one of {_TRANSPORTS}, got {self.transport!r}"
            )
        if self.dealer not in _DEALERS:
            raise ConfigurationError(f"dealer must be one of {_DEALERS}, got {self.dealer!r}")
        if self.truncation not in _TRUNCATIONS:
            raise ConfigurationError(
                f"truncation must be one of {_TRUNCATIONS}, got {self.truncation!r}"
            )
        if self.protocol not in _PROTOCOLS:
            raise ConfigurationError(f"protocol must be one of {_PROTOCOLS}, got {self.protocol!r}")
        if self.max_message_bytes < 1024:
            raise ConfigurationError(
                f"max_message_bytes must be at least 1024, got {self.max_message_bytes}"
            )
        if self.max_queued_bytes != 0 and self.max_queued_bytes < 1024:
            raise ConfigurationError(
                f"max_queued_bytes must be 0 (= max_message_bytes) or at least 1024, "
                f"got {self.max_queued_bytes}"
            )

    @property
    def queued_bytes_bound(self) -> int:
        """The per-peer inbox bound in effect (``max_queued_bytes``, or ``max_message_bytes``
        when it is 0)."""
        return self.max_queued_bytes or self.max_message_bytes

    def replace(self, **changes: object) -> Config:
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The environment variables that make :func:`config_from_env` return this config."""
        return {
            _env_name(field.name): str(getattr(self, field.name))
            for field in dataclasses.fields(self)
        }


def _env_name(field_name: str) -> str:
    return ENV_PREFIX + {
        "timeout_s": "TIMEOUT",
        "rendezvous_timeout_s": "RENDEZVOUS_TIMEOUT",
    }.get(field_name, field_name.upper())


def config_from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Config:
    """Build a :class:`Config` from ``CRYPTEN_LITE_*`` variables, then apply ``overrides``.

    Raises:
        ConfigurationError: a variable does not parse or a value is out of range; the message
            names the variable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in dataclasses.fields(Config):
        name = _env_name(field.name)
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        kind: type = type(field.default)
        try:
            values[field.name] = kind(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]
