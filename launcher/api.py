"""Layer L6: the Python API of the launcher — :func:`launch`.

``crypten_lite.launch`` and ``@crypten_lite.run_multiprocess`` reach this function through the
``launch`` entry point. Nothing is pickled: the function travels as an importable reference
(module, qualified name, file and first line — a script run as ``__main__`` is loaded from its
file in the party as ``__mp_main__``), and arguments and results as JSON plus raw tensor
buffers (:mod:`crypten_lite.launcher.codec`, which lists the supported types).
"""

from __future__ import annotations

import inspect
import io
import json
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from crypten_lite.config import Config, config_from_env
from crypten_lite.errors import ConfigurationError, LaunchError, PartyFailedError
from crypten_lite.launcher.codec import read_value, write_value
from crypten_lite.launcher.local import TFP_WARNING, run_local
from crypten_lite.launcher.session import ENV_COORDINATOR, private_run_dir

__all__ = ["function_reference", "launch"]

T = TypeVar("T")


def function_reference(fn: Callable[..., Any]) -> dict[str, Any]:
    """How a party process finds ``fn``: module, qualified name, source file and first line.

    Raises:
        TypeError: ``fn`` is not a module-level (or class-level) Python function — lambdas,
            nested functions and callable objects cannot be found by name in another process.
    """
    target = inspect.unwrap(fn)
    code = getattr(target, "__code__", None)
    qualname = getattr(fn, "__qualname__", "")
    if code is None or not inspect.isfunction(target):
        raise TypeError(f"launch() needs a Python function, got {type(fn).__name__}")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"launch() needs a function defined at module level, got {qualname!r}; the party "
            "processes import it by name"
        )
    module = getattr(fn, "__module__", None) or "__main__"
    file = inspect.getsourcefile(target) or code.co_filename
    if not os.path.exists(file):
        raise TypeError(f"launch(): the source file of {qualname!r} ({file}) cannot be found")
    return {
        "module": module,
        "qualname": qualname,
        "file": os.path.abspath(file),
        "line": code.co_firstlineno,
    }


def launch(
    fn: Callable[..., T],
    world_size: int = 2,
    *,
    args: tuple[Any, ...] = (),
    dealer: bool | None = None,
    protocol: str | None = None,
    transport: str | None = None,
    config: Config | None = None,
    timeout_s: float | None = 300.0,
    threads: int | None = None,
    quiet: bool = False,
) -> list[T]:
    """Run ``fn(*args)`` on ``world_size`` party processes of this host; return the results.

    Each party process calls :func:`crypten_lite.init` (ZeroMQ, real rendezvous), then
    ``fn(*args)``, then :func:`crypten_lite.uninit`.

    Args:
        fn: a module-level function (see :func:`function_reference`).
        world_size: number of parties (>= 2).
        args: positional arguments, restricted to the types listed in
            :mod:`crypten_lite.launcher.codec`; every party gets the same values.
        dealer: start a dealer process (``ttp``); ``False`` makes party 0 deal — INSECURE,
            for tests only, and a ``RuntimeWarning`` says so. Default: a dealer for the
            Beaver family, none for the replicated family (which refuses one).
        protocol: ``"beaver"`` or ``"replicated"`` (3 parties, honest majority, no dealer);
            default: ``config.protocol`` (``CRYPTEN_LITE_PROTOCOL``, else ``"beaver"``).
        transport: ``"ipc"`` or ``"tcp"`` (default: ``config.transport``, which defaults to
            ``"ipc"``).
        config: session settings (default: from the ``CRYPTEN_LITE_*`` environment);
            ``dealer``, ``protocol`` and ``transport`` above take precedence over its fields.
        timeout_s: wall-clock limit for the whole run (``None``: none).
        threads: torch threads per party (default: split this host's cores).
        quiet: do not relay the parties' output (it is still used for error reports).

    Returns:
        ``fn``'s return value on each party, by rank.

    Raises:
        PartyFailedError: a party or the dealer failed; the message names it and includes its
            traceback.
        LaunchError: called from inside a party process (guard the call with
            ``if __name__ == "__main__":``), or the run timed out.
        TypeError: ``fn``, an argument or a result cannot cross a process boundary.
    """
    if os.environ.get(ENV_COORDINATOR):
        raise LaunchError(
            "launch() was called inside a party process; if a script calls launch() at import "
            'time, guard the call with `if __name__ == "__main__":`'
        )
    if world_size < 2:
        raise ConfigurationError(f"launch() needs at least 2 parties, got {world_size}")
    ref = function_reference(fn)
    base = config or config_from_env()
    family = protocol or base.protocol
    if dealer is None:
        dealer = family != "replicated"
    config = base.replace(
        transport=transport or base.transport, dealer="ttp" if dealer else "tfp", protocol=family
    )
    if not dealer and family != "replicated":
        warnings.warn(f"launch(dealer=False): {TFP_WARNING}", RuntimeWarning, stacklevel=2)
    with private_run_dir() as run_dir:
        (run_dir / "call.json").write_text(json.dumps(ref))
        write_value(run_dir / "args.clv", tuple(args), where="args")
        sink = io.StringIO() if quiet else None
        outcome = run_local(
            ["call"],
            world_size,
            dealer=dealer,
            config=config,
            run_dir=run_dir,
            threads=threads,
            max_time_s=timeout_s,
            out=sink,
            err=sink,
        )
        if outcome.exit_code == 130:
            raise KeyboardInterrupt
        if outcome.exit_code == 124:
            raise LaunchError(outcome.message.removeprefix("crypten-lite: "))
        if not outcome.ok:
            raise PartyFailedError(outcome.report().removeprefix("crypten-lite: "))
        return [read_value(run_dir / f"result-{rank}.clv") for rank in range(world_size)]
