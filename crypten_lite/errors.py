"""Layer L0: the error hierarchy of crypten_lite.

Every error the library raises on purpose derives from :class:`CryptenLiteError`. Subclasses also
derive from the closest builtin, so ``except TimeoutError`` or ``except TypeError`` keep working
for code that does not know this library.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "CryptenLiteError",
    "EncodingError",
    "LaunchError",
    "PartyFailedError",
    "PartyTimeoutError",
    "ProtocolError",
    "SecretLeakError",
    "UnsupportedOperationError",
]


class CryptenLiteError(Exception):
    """Base class of every error raised by crypten_lite."""


class ConfigurationError(CryptenLiteError, ValueError):
    """A setting, argument or environment variable has an invalid value."""


class ProtocolError(CryptenLiteError):
    """The parties disagree: desynchronised ops, a malformed frame, a version mismatch."""


class AuthenticationError(ProtocolError):
    """A peer could not prove it holds the session secret."""


class PartyTimeoutError(ProtocolError, TimeoutError):
    """An expected message did not arrive within the configured timeout."""


class PartyFailedError(CryptenLiteError, RuntimeError):
    """Another party (or the dealer) failed, so this party cannot go on."""


class LaunchError(CryptenLiteError, RuntimeError):
    """Starting or supervising the parties failed."""


class UnsupportedOperationError(CryptenLiteError, NotImplementedError, TypeError):
    """An operation has no secure implementation (it is never silently run on a share).

    Both a ``NotImplementedError`` (DESIGN.md §3) and a ``TypeError`` (the operand type does not
    support the call), so either ``except`` catches it.
    """


class SecretLeakError(CryptenLiteError, RuntimeError):
    """Code tried to branch on, print or convert a secret value."""


class EncodingError(CryptenLiteError, ValueError):
    """A public value cannot be represented in the fixed-point ring."""
