"""Layer L3: the numerical approximations, in one namespace.

The functions live in :mod:`~crypten_lite.protocols.elementary` (exp, log, reciprocal, div,
sqrt, inv_sqrt, pow, norm, sin, cos), :mod:`~crypten_lite.protocols.activations` (sigmoid,
tanh, erf, gelu, silu), :mod:`~crypten_lite.protocols.softmax` (softmax, log_softmax) and :mod:`~crypten_lite.protocols.moments`
(standardize: LayerNorm, BatchNorm, RMSNorm); building blocks in
:mod:`~crypten_lite.protocols.polynomial`. Every function takes and returns int64 shares at
scale ``f = party.frac_bits`` and the :class:`~crypten_lite.runtime.party.Party` explicitly.

Summary (2 parties, ``f = 16``; rounds without the dealer request round trip of a dealer
process; errors measured against float64, see each docstring for saturation outside the
domain):

=============  ===========================  =============================  ======  =======
function       domain                       max error (measured)           rounds  CrypTen
=============  ===========================  =============================  ======  =======
exp            [-16, 8] (~0 to -160)        rel 8.5e-5 (>= 1), 2 ulp abs   8       8
log            [2**-16, 2**44)              abs 3.4e-5                     9
reciprocal     |x| in [2**-16, 2**16)       rel 2.0e-5 (|1/x| >= 1), 2 ulp 15      38
  positive     x in [2**-16, 2**16)         same                           11
  hint         lo/hi within a factor 16     same                           7
div            |y| in [2**-16, 2**44)       rel 2e-5 of x/y + 3 ulp        17
sqrt           [0, 2**44)                   rel 1.2e-4 + 2 ulp             10      18
inv_sqrt       (0, 2**44)                   rel 4.9e-5 + 2 ulp             11
sigmoid        all x                        abs 7e-5                       9       23
tanh, erf      all x                        abs 9.2e-5, 3e-5               9
gelu, silu     all x                        abs 3.8e-5, 1.2e-4             9
softmax        any, any row length n        abs 8e-5 (n <= 1024)           18 (a)  94
log_softmax    any, any row length n        abs 1.3e-4 (n <= 1024)         18 (a)
sin, cos       any x                        abs 2e-4 + |x| 2**-22          8
pow p >= 0 int any (result in the ring)     1 ulp per product              bits(p)
pow other p    |x| in [2**-16, 2**44)       rel 1e-4 + 2 ulp, |x**p|<=2**30 11
norm           p in {1, 2, inf}             as sqrt / exact
standardize    var+eps in [2.4e-7, 2.3e9]   x_hat abs 2e-4, rstd rel 1e-4  12
  (n = 768)    (std ~5e-4 .. 5e4)
=============  ===========================  =============================  ======  =======

(a) ``n <= 10`` (19 with the exact default); ``R + 13`` (``R + 14`` exact) for a row max of
``R`` rounds (10 for ``n <= 100``, 14 for ``n = 128``): 23 / 27 local, 24 / 28 exact. log_softmax
``R + 13`` (exact: ``R + 18``).

Outside the domains (measured by the sweeps in ``tests/mpc/test_numerics_norm.py``, 2 and 3
parties, magnitudes ``2**-16 .. 2**46``): ``inv_sqrt`` returns 0 at and above ``2**44`` (the
true value is below ``2**-22``), ``sqrt`` returns ``2**22``, ``log`` returns ``ln 2**44``,
``reciprocal`` returns 0 above ``2**16`` (within one ulp) and ``2**16`` at 0; ``pow`` saturates
results above ``2**30`` to ``[2**30, 2**(30 + |p|)]`` and raises for ``|p| > 16``;
``standardize`` saturates ``rstd`` below its domain (constant rows give 0 as in torch). ``eps``
below one ulp (``1e-12``, ``1e-5``) is added at the fine stage's scale, not rounded to
``2**-f``.

With more than 2 parties every truncation is a dealer round, so the product-heavy functions
take about twice the rounds. The rounds above are for opt-in 2-party local truncation; the
default (exact) truncation is a dealer round for 2 parties too.

The domain and error columns are data in :data:`crypten_lite.protocols.domains.DOMAINS`, which
``check_model``'s domain report and ``debug(validate=True)`` read: change both together.
"""

from __future__ import annotations

from crypten_lite.protocols.activations import (
    erf,
    gelu,
    sigmoid,
    silu,
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
from crypten_lite.protocols.moments import standardize
from crypten_lite.protocols.softmax import log_softmax, softmax

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
    "standardize",
    "tanh",
]
