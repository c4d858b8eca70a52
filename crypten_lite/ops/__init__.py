"""Layer L4: the op table of :class:`~crypten_lite.tensor.MPCTensor`, one module per op family.

Importing this package registers every implementation with
:func:`crypten_lite.tensor.implements`:

* ``creation`` — factories, copies, casts, public random fills;
* ``shape`` — views, indexing, concatenation, padding (data movement on shares);
* ``arithmetic`` — add, sub, mul, div, fused multiply-adds, where;
* ``division`` — exact floor division and remainder by a public ``±2**k`` (fast path of ``rounding``);
* ``reductions`` — sum, mean, cumsum, var;
* ``linear`` — matrix products and convolutions with their backward;
* ``linear_extra`` — ``nn.Bilinear`` (``_trilinear``) and ``nn.EmbeddingBag`` with backward;
* ``nonlinear`` — comparisons, ReLU family, abs, clamp, max/min;
* ``activations_extra`` — hardsigmoid, hardswish, ELU/CELU/SELU, softplus, mish;
* ``approx`` — exp, log, reciprocal, roots, sigmoid, tanh, erf, GeLU, SiLU, softmax, powers;
* ``normalization`` — layer norm and batch norm with their backward;
* ``norms_extra`` — group norm with its backward;
* ``resample`` — interpolation (nearest, (bi/tri)linear, bicubic) and pixel (un)shuffle;
* ``pooling`` — average, adaptive average and max pooling with their backward;
* ``recurrent`` — LSTM, GRU, RNN and their cells, kept whole (torch-level overrides);
* ``attention`` — scaled dot-product attention kept whole, with its backward;
* ``losses`` — loss functions and their backward;
* ``foreach`` — the ``_foreach_*`` ops of ``torch.optim``'s multi-tensor path;
* ``pooling1d`` — 1-d average pooling (aten level) through the 2-d ops;
* ``norms`` — vector norms (``norm``, ``linalg.vector_norm``), ``cdist``/``pdist``;
* ``predicates`` — ``isnan``/``isinf``/``isfinite`` (public), ``any``/``all`` (secret);
* ``products`` — ``prod`` and ``cumprod``;
* ``rounding`` — exact ``floor``, ``ceil``, ``trunc``, ``round``, ``frac``;
* ``sorting`` — ``sort``/``argsort``, ``topk``, ``kthvalue``, ``median``, ``cummax``/``cummin``;
* ``transcendental`` — ``log2``/``log10``, ``sinh``/``cosh``/``tan``, ``pow`` with a secret exponent;
* ``inplace`` — the in-place twin (``abs_``, ``squeeze_``, ...) of every op above (imported last).
"""

from crypten_lite.ops import (  # noqa: F401 - imported to register the ops
    activations_extra,
    approx,
    arithmetic,
    attention,
    creation,
    division,
    foreach,
    linear,
    linear_extra,
    losses,
    nonlinear,
    normalization,
    norms,
    norms_extra,
    pooling,
    pooling1d,
    predicates,
    products,
    recurrent,
    reductions,
    resample,
    rounding,
    shape,
    sorting,
    transcendental,
)

# isort: split
from crypten_lite.ops import inplace  # noqa: F401 - last: the twins of every op above

# isort: split
import crypten_lite.bridge  # noqa: F401 - registers the replicated family's dispatch hook

__all__ = [
    "activations_extra",
    "approx",
    "arithmetic",
    "attention",
    "creation",
    "division",
    "foreach",
    "inplace",
    "linear",
    "linear_extra",
    "losses",
    "nonlinear",
    "normalization",
    "norms",
    "norms_extra",
    "pooling",
    "pooling1d",
    "predicates",
    "products",
    "recurrent",
    "reductions",
    "resample",
    "rounding",
    "shape",
    "sorting",
    "transcendental",
]
