"""Layer L6: what runs inside a launched process.

``python -m crypten_lite.launcher.child MODE ...`` with MODE one of:

* ``script PATH [ARGS...]`` — run a user script as ``__main__`` (``crypten-lite launch``);
* ``call`` — run the function described by ``call.json`` in the run directory after
  :func:`crypten_lite.init`, call :func:`crypten_lite.uninit`, and write the result to
  ``result-<rank>.clv`` (:func:`crypten_lite.launcher.api.launch`);
* ``dealer`` — connect as the dealer (rank ``WORLD_SIZE``), run
  :func:`crypten_lite.runtime.party.dealer_setup` and serve correlated randomness until party 0 says
  ``shutdown`` (exit 0); if party 0 leaves without saying it, the session failed (exit 1).

On failure a child writes its traceback to ``failure-<name>.txt`` in the run directory (the
launcher shows it), prints it on stderr and exits 1 without running interpreter teardown.
Every child first asks the kernel to kill it if its launcher dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import os
import runpy
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, NoReturn

import crypten_lite
from crypten_lite.config import config_from_env
from crypten_lite.errors import PartyFailedError
from crypten_lite.launcher.codec import read_value, write_value
from crypten_lite.launcher.connect import connect_from_env
from crypten_lite.launcher.session import ENV_LAUNCHER_PID, ENV_ROLE, ENV_RUN_DIR
from crypten_lite.launcher.supervisor import failure_file
from crypten_lite.runtime.dealer import serve_dealer
from crypten_lite.runtime.party import dealer_setup

__all__ = ["main", "resolve_function"]

_PR_SET_PDEATHSIG = 1


def _die_with_launcher() -> None:
    """Make the kernel SIGKILL this process when the launcher that started it exits."""
    pid = os.environ.get(ENV_LAUNCHER_PID)
    if not pid or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() != int(pid):  # the launcher died before prctl took effect
        os._exit(1)


def _name() -> str:
    if os.environ.get(ENV_ROLE) == "dealer":
        return "dealer"
    return f"party {os.environ.get('RANK', '?')}"


def _user_traceback(exc: BaseException, skip: tuple[str, ...]) -> str:
    """Format ``exc`` without the launcher's own frames at the top of the stack."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename not in skip and not filename.startswith("<frozen runpy"):
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _fail(text: str) -> NoReturn:
    """Report a failure to the launcher and exit 1 at once (no teardown that could hang)."""
    run_dir = os.environ.get(ENV_RUN_DIR)
    if run_dir:
        try:
            failure_file(Path(run_dir), _name()).write_text(text)
        except OSError:
            pass
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return 1


def run_script(path: str, args: list[str]) -> int:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]``, like ``python path``."""
    sys.argv = [path, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    skip = (__file__, runpy.__file__)
    try:
        runpy.run_path(path, run_name="__main__")
        # A script that forgets uninit() would exit with its last messages still queued.
        crypten_lite.uninit()
    except SystemExit as exc:
        code = _exit_code(exc)
        if code != 0:
            _fail(f"{path} exited with code {code}")
        crypten_lite.uninit()
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher
        _fail(_user_traceback(exc, skip))
    return 0


def _load_module(name: str, file: str) -> ModuleType:
    """Import ``name``, or load ``file`` under that name if the import fails or differs.

    A script that ran as ``__main__`` is loaded as ``__mp_main__``, so its
    ``if __name__ == "__main__":`` block does not run again in the party.
    """
    if name != "__main__":
        try:
            module = importlib.import_module(name)
            if os.path.abspath(getattr(module, "__file__", "") or "") == os.path.abspath(file):
                return module
        except ImportError:
            pass
    load_as = "__mp_main__" if name == "__main__" else name
    spec = importlib.util.spec_from_file_location(load_as, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {file} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[load_as] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(file)))
    spec.loader.exec_module(module)
    return module


def resolve_function(ref: dict[str, Any]) -> Callable[..., Any]:
    """Find the function a :func:`~crypten_lite.launcher.api.function_reference` describes.

    Decorators that keep ``__wrapped__`` (``functools.wraps``, e.g. ``run_multiprocess``) are
    peeled off until the function defined at the recorded file and line is found, so a
    decorated function does not launch itself again inside the party.
    """
    module = _load_module(ref["module"], ref["file"])
    obj: Any = module
    for part in ref["qualname"].split("."):
        obj = getattr(obj, part)
    candidate = obj
    while candidate is not None:
        code = getattr(candidate, "__code__", None)
        if (
            code is not None
            and code.co_firstlineno == ref["line"]
            and os.path.abspath(code.co_filename) == os.path.abspath(ref["file"])
        ):
            return candidate  # type: ignore[no-any-return]
        candidate = getattr(candidate, "__wrapped__", None)
    raise ImportError(
        f"{ref['module']}.{ref['qualname']} in the party process is not the function defined at "
        f"{ref['file']}:{ref['line']}"
    )


def run_call() -> int:
    """Run one ``launch()`` call in this party (see the module docstring)."""
    run_dir = Path(os.environ[ENV_RUN_DIR])
    rank = int(os.environ["RANK"])
    skip = (__file__,)
    try:
        ref = json.loads((run_dir / "call.json").read_text())
        fn = resolve_function(ref)
        args = read_value(run_dir / "args.clv")
        crypten_lite.init()
        result = fn(*args)
        crypten_lite.uninit()
        write_value(run_dir / f"result-{rank}.clv", result, where=f"party {rank}'s result")
    except BaseException as exc:  # noqa: BLE001 - reported to the caller of launch()
        _fail(_user_traceback(exc, skip))
    return 0


def run_dealer() -> int:
    """Serve as the dealer process until party 0 says ``shutdown`` or leaves."""
    try:
        comm = connect_from_env(config_from_env())
        try:
            streams = dealer_setup(comm)
            served = serve_dealer(comm, streams)
            print(f"served {served} items of correlated randomness", flush=True)
        except PartyFailedError as exc:
            # Party 0 left without saying shutdown, so the session failed: exit non-zero, or
            # a dealer-only launcher (multi-host) would report success.
            _fail(f"the session ended without shutdown from party 0: {exc}")
        comm.close()
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher
        _fail(_user_traceback(exc, (__file__,)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of a child process (usage in the module docstring)."""
    _die_with_launcher()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["script"] and len(argv) >= 2:
        return run_script(argv[1], argv[2:])
    if argv == ["call"]:
        return run_call()
    if argv == ["dealer"]:
        return run_dealer()
    sys.stderr.write(
        "usage: python -m crypten_lite.launcher.child script PATH [ARGS] | call | dealer\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
