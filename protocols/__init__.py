"""Layer L3: the cryptographic protocols, as functions on raw int64 share tensors.

Every function takes the :class:`~crypten_lite.runtime.party.Party` explicitly and never imports zmq or
the user-facing tensor type. Installed as ``crypten_lite.protocols``.

Primitives — the only code that sends messages or consumes dealer material; each carries its
protocol, cost, security argument and paper (what a new protocol must be built from):

=================  ============================================================================
``opening``        ``open_shares`` / ``open_xor_shares``: the one door to disclosure
``sharing``        ``share`` (an input becomes a sharing), ``reveal`` (through ``opening``)
``beaver``         ``beaver``: any bilinear op with one triple, one round; reusable fixed masks
``truncation``     ``truncate``: fixed-point rescaling (local for 2 parties, dealer pair for N)
``msb``            ``sign_bits``: XOR shares of ``msb(x - t)``, three rounds
``binary``         ``and_k``: ANDs of XOR-shared words with binary triples
``conversion``     ``a2b``, ``b2a``, ``inject_masked``: between arithmetic and XOR sharing
``replicated``     three parties, no dealer: companions, input sharing, products, truncation
=================  ============================================================================

Compositions — built from the primitives above only, no messages of their own:

=================  ============================================================================
``arithmetic``     ring-level products truncated by a given bit count, public division (``beaver`` + ``truncation``)
``comparison``     ``ltz``, ``relu``, ``eq``, ``clamp``, ... (``sign_bits`` + bit injection)
``reduction``      ``max`` / ``argmax`` by tournament or all-pairs comparison
``pooling``        max pooling and its backward
``polynomial``     piecewise polynomials, powers
``elementary``     exp, log, reciprocal, sqrt, inverse sqrt (iterations of products)
``activations``    sigmoid, tanh, GeLU, erf, SiLU (approximations + comparisons)
``softmax``        softmax, log_softmax (row max, exp by segments, bucketed reciprocal)
``approximations`` the approximation registry: domain, error and rounds of each function
=================  ============================================================================
"""

if __name__ != "crypten_lite.protocols":  # pragma: no cover - import guard
    raise ImportError(
        "import this package as 'crypten_lite.protocols' (install crypten-lite with "
        "`pip install -e .`), not as a top-level 'protocols' package"
    )
