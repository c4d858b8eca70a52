"""Layer L3: the numerical approximations, in one namespace.

The functions live in :mod:`~crypten_lite.protocols.elementary` (exp, log, reciprocal, div,
sqrt, inv_sqrt, pow, norm, sin, cos) and :mod:`~crypten_lite.protocols.activations` (sigmoid,
tanh, erf, gelu, silu, softmax, log_softmax); building blocks in
:mod:`~crypten_lite.protocols.polynomial`. Every function takes and returns int64 shares at
scale ``f = party.frac_bits`` and the :class:`~crypten_lite.party.Party` explicitly.

Summary (2 parties, ``f = 16``; rounds without the dealer request round trip of a dealer
process; errors measured against float64, see each docstring for saturation outside the
domain):

=============  ===========================  =============================  ======  =======
function       domain                       max error (measured)           rounds  CrypTen
=============  ===========================  =============================  ======  =======
exp            [-16, 8] (~0 to -160)        rel 8.5e-5 (>= 1), 2 ulp abs   8       8
log            [2**-16, 2**20)              abs 3.4e-5                     8
reciprocal     |x| in [2**-16, 2**16)       rel 2.0e-5 (|1/x| >= 1), 2 ulp 15      38
  positive     x in [2**-16, 2**16)         same                           11
  hint         lo/hi within a factor 16     same                           7
div            y as reciprocal              rel 2e-4 + ulps                16
sqrt           [0, 2**20)                   rel 1.2e-4 + 2 ulp             9       18
inv_sqrt       (0, 2**20)                   rel 4.9e-5 + 2 ulp             10
sigmoid        all x                        abs 7e-5                       9       23
tanh, erf      all x                        abs 9.2e-5, 3e-5               9
gelu, silu     all x                        abs 3.8e-5, 1.2e-4             9
softmax        any, any row length n        abs 7.5e-5 (n <= 1024)         22 (a)  94
log_softmax    any, any row length n        abs 5e-5 (n <= 1024)           22 (a)
sin, cos       any x                        abs 2e-4 + |x| 2**-22          8
pow            per exponent kind            as the pieces
norm           p in {1, 2, inf}             as sqrt / exact
=============  ===========================  =============================  ======  =======

(a) ``n <= 10``; ``5 L + 17`` for a row-max tree of ``L`` levels (27 for ``n <= 100``, 32
for ``n <= 1000``).

With more than 2 parties every truncation is a dealer round, so the product-heavy functions
take about twice the rounds.
"""

from __future__ import annotations

from crypten_lite.protocols.activations import (
    erf,
    gelu,
    log_softmax,
    sigmoid,
    silu,
    softmax,
    tanh,
)
from crypten_lite.protocols.elementary import (
    cos,
    div,
    exp,
    inv_sqrt,
    log,
    norm,
    pow,
    reciprocal,
    sin,
    sqrt,
)

__all__ = [
    "cos",
    "div",
    "erf",
    "exp",
    "gelu",
    "inv_sqrt",
    "log",
    "log_softmax",
    "norm",
    "pow",
    "reciprocal",
    "sigmoid",
    "silu",
    "sin",
    "softmax",
    "sqrt",
    "tanh",
]
