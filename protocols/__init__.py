"""Layer L3: the cryptographic protocols, as functions on raw int64 share tensors.

Every function takes the :class:`~crypten_lite.party.Party` explicitly and never imports zmq or
the user-facing tensor type. Installed as ``crypten_lite.protocols``.
"""

if __name__ != "crypten_lite.protocols":  # pragma: no cover - import guard
    raise ImportError(
        "import this package as 'crypten_lite.protocols' (install crypten-lite with "
        "`pip install -e .`), not as a top-level 'protocols' package"
    )
