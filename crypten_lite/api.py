"""Layer L5: the session-level user API — ``init``, the current party, ``launch``.

The current party lives in a :class:`contextvars.ContextVar`, so N parties can run as N threads
of one test process. Transports and the process launcher live in the launcher layer (L6); this
module reaches them through the ``crypten_lite.plugins`` entry points, never by importing them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from importlib.metadata import entry_points
from typing import Any, TypeVar

from crypten_lite.config import Config, config_from_env
from crypten_lite.errors import CryptenLiteError
from crypten_lite.runtime.party import Party

__all__ = [
    "get_party",
    "init",
    "is_initialized",
    "launch",
    "run_multiprocess",
    "uninit",
    "use_party",
]

T = TypeVar("T")
_PLUGIN_GROUP = "crypten_lite.plugins"
_current: ContextVar[Party | None] = ContextVar("crypten_lite_party", default=None)


def _plugin(name: str) -> Callable[..., Any]:
    found = [ep for ep in entry_points(group=_PLUGIN_GROUP) if ep.name == name]
    if not found:
        raise CryptenLiteError(
            f"no '{name}' plugin registered in entry point group {_PLUGIN_GROUP!r}: "
            "is crypten-lite installed (`pip install -e .`)?"
        )
    return found[0].load()  # type: ignore[no-any-return]


def init(config: Config | None = None) -> Party:
    """Join the session this process was started in (by ``crypten-lite launch`` or ``launch``).

    Reads the launcher's environment (``RANK``, ``WORLD_SIZE``, the rendezvous address and the
    session secret), connects to the other parties, runs the set-up protocol and makes the
    party current. Calling it again returns the current party.
    """
    party = _current.get()
    if party is not None:
        return party
    config = config or config_from_env()
    comm = _plugin("connect")(config)
    try:
        party = Party.setup(comm, config)
    except BaseException:
        # Let the messages already queued (this party's session fingerprint, say) reach the
        # peers, so the party that did not fail can name the cause; but never wait long.
        _close_briefly(comm, 1.0)
        raise
    _current.set(party)
    return party


def _close_briefly(comm: Any, timeout_s: float) -> None:
    closer = threading.Thread(target=comm.close, name="crypten-lite-close", daemon=True)
    closer.start()
    closer.join(timeout_s)


def is_initialized() -> bool:
    """Whether this thread/context has a current party."""
    return _current.get() is not None


def get_party() -> Party:
    """The current party.

    Raises:
        CryptenLiteError: :func:`init` was not called in this context.
    """
    party = _current.get()
    if party is None:
        raise CryptenLiteError("no crypten_lite session: call crypten_lite.init() first")
    return party


def uninit() -> None:
    """Leave the session: release the dealer and close the connections."""
    party = _current.get()
    if party is not None:
        _current.set(None)
        try:
            party.close()
        finally:
            party.comm.close()


@contextlib.contextmanager
def use_party(party: Party) -> Iterator[Party]:
    """Make ``party`` current inside the ``with`` block (for threads and tests)."""
    token = _current.set(party)
    try:
        yield party
    finally:
        _current.reset(token)


def launch(
    fn: Callable[..., T],
    world_size: int = 2,
    *,
    args: tuple[Any, ...] = (),
    dealer: bool | None = None,
    **kwargs: Any,
) -> list[T]:
    """Run ``fn(*args)`` in ``world_size`` party processes (plus the dealer process when
    ``dealer``) and return each party's result, by rank.

    Each process calls :func:`init` before ``fn`` and :func:`uninit` after it. ``fn`` and its
    arguments must be importable by the child processes (a module-level function). Other
    keyword arguments go to the launcher (``transport``, ``config``, ``timeout_s``,
    ``protocol``). ``dealer`` defaults to a dealer process for the Beaver family and none for
    ``protocol="replicated"`` (3 parties, which refuses one).
    """
    return _plugin("launch")(fn, world_size, args=args, dealer=dealer, **kwargs)  # type: ignore[no-any-return]


def run_multiprocess(
    world_size: int, **launch_kwargs: Any
) -> Callable[[Callable[..., T]], Callable[..., list[T]]]:
    """Decorator: calling the function runs it on ``world_size`` parties (CrypTen's name)."""

    def decorate(fn: Callable[..., T]) -> Callable[..., list[T]]:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> list[T]:
            return launch(fn, world_size, args=args, **launch_kwargs)

        return wrapper

    return decorate
