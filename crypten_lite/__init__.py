"""crypten_lite: private machine learning by secure multi-party computation.

Layer L5 (user API). Importing the package has no side effects: nothing connects, nothing reads
the environment, until :func:`init` is called.
"""

from __future__ import annotations

from crypten_lite.api import (
    get_party,
    init,
    is_initialized,
    launch,
    run_multiprocess,
    uninit,
    use_party,
)
from crypten_lite.config import Config, config_from_env
from crypten_lite.errors import (
    AuthenticationError,
    ConfigurationError,
    CryptenLiteError,
    EncodingError,
    LaunchError,
    PartyFailedError,
    PartyTimeoutError,
    ProtocolError,
    SecretLeakError,
    UnsupportedOperationError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Config",
    "ConfigurationError",
    "CryptenLiteError",
    "EncodingError",
    "LaunchError",
    "PartyFailedError",
    "PartyTimeoutError",
    "ProtocolError",
    "SecretLeakError",
    "UnsupportedOperationError",
    "__version__",
    "config_from_env",
    "get_party",
    "init",
    "is_initialized",
    "launch",
    "run_multiprocess",
    "uninit",
    "use_party",
]
