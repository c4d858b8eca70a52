"""crypten_lite: private machine learning by secure multi-party computation.

Layer L5 (user API). Importing the package has no side effects: nothing connects, nothing reads
the environment, until :func:`init` is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

# Everything that needs torch is imported on first use: the launcher CLI and the dealer
# process import this package, and torch alone costs them a second or more of start-up.
_LAZY = {
    "nn": "crypten_lite.nn",
    "get_party": "crypten_lite.api",
    "init": "crypten_lite.api",
    "is_initialized": "crypten_lite.api",
    "launch": "crypten_lite.api",
    "run_multiprocess": "crypten_lite.api",
    "uninit": "crypten_lite.api",
    "use_party": "crypten_lite.api",
    "BinaryMPCTensor": "crypten_lite.binary",
    "CheckReport": "crypten_lite.check",
    "check_model": "crypten_lite.check",
    "debug": "crypten_lite.debug",
    "Generation": "crypten_lite.generation",
    "generate": "crypten_lite.generation",
    "cryptensor": "crypten_lite.encrypted",
    "decrypt_module": "crypten_lite.encrypted",
    "encrypt_module": "crypten_lite.encrypted",
    "load": "crypten_lite.encrypted",
    "load_from_party": "crypten_lite.encrypted",
    "save": "crypten_lite.encrypted",
    "profile": "crypten_lite.profiling",
    "Plan": "crypten_lite.preprocessing",
    "PlanMismatchError": "crypten_lite.preprocessing",
    "load_plan": "crypten_lite.preprocessing",
    "plan": "crypten_lite.preprocessing",
    "MPCTensor": "crypten_lite.tensor",
    "is_encrypted": "crypten_lite.tensor",
    "ptype": "crypten_lite.tensor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crypten_lite' has no attribute {name!r}")
    value = (
        importlib.import_module(module)
        if name == "nn"
        else getattr(importlib.import_module(module), name)
    )
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from crypten_lite import nn
    from crypten_lite.api import (
        get_party,
        init,
        is_initialized,
        launch,
        run_multiprocess,
        uninit,
        use_party,
    )
    from crypten_lite.binary import BinaryMPCTensor
    from crypten_lite.check import CheckReport, check_model
    from crypten_lite.debug import debug
    from crypten_lite.encrypted import (
        cryptensor,
        decrypt_module,
        encrypt_module,
        load,
        load_from_party,
        save,
    )
    from crypten_lite.generation import Generation, generate
    from crypten_lite.preprocessing import Plan, PlanMismatchError, load_plan, plan
    from crypten_lite.profiling import profile
    from crypten_lite.tensor import MPCTensor, is_encrypted, ptype

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BinaryMPCTensor",
    "CheckReport",
    "Config",
    "ConfigurationError",
    "CryptenLiteError",
    "EncodingError",
    "Generation",
    "LaunchError",
    "MPCTensor",
    "PartyFailedError",
    "Plan",
    "PlanMismatchError",
    "PartyTimeoutError",
    "ProtocolError",
    "SecretLeakError",
    "UnsupportedOperationError",
    "__version__",
    "check_model",
    "config_from_env",
    "cryptensor",
    "debug",
    "decrypt_module",
    "encrypt_module",
    "generate",
    "get_party",
    "init",
    "is_encrypted",
    "is_initialized",
    "launch",
    "load",
    "load_from_party",
    "load_plan",
    "nn",
    "plan",
    "profile",
    "ptype",
    "run_multiprocess",
    "save",
    "uninit",
    "use_party",
]
