"""Layer L6: the launcher — CLI, process spawning and supervision, rendezvous, the ZeroMQ
communicator and the dealer process. The only layer that imports ``zmq``, ``subprocess`` or
``multiprocessing``. Installed as ``crypten_lite.launcher``.
"""

if __name__ != "crypten_lite.launcher":  # pragma: no cover - import guard
    raise ImportError(
        "import this package as 'crypten_lite.launcher' (install crypten-lite with "
        "`pip install -e .`), not as a top-level 'launcher' package"
    )
