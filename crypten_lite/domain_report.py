"""Layer L5: the domain report of ``check_model`` — where a model's values leave the protocols'
documented domains or the ring's headroom, found by one plaintext run on an example input.

The model runs in plain torch under a dispatch mode that sees every aten op together with the
innermost ``nn.Module`` running it. Each op's plaintext arguments and result are held to the
table of :mod:`crypten_lite.protocols.domains` (the same numbers the protocols' docstrings and
``debug(validate=True)`` use):

* values beyond the fixed-point range ``|x| < 2**(63 - f)`` (an op's result);
* products (``mm``, ``bmm``, ``addmm``, ``conv``, ``mul``) at or above the exact truncation's
  headroom ``|x * y| < 2**(62 - 2f)``; with 2-party local truncation (opt-in) also the expected
  number of truncation failures in the pass, when it is at least ``failure_threshold``;
* arguments outside an approximation's domain: ``exp`` above its upper end, ``log``,
  ``reciprocal``, division by a tensor, ``sqrt``, ``rsqrt``, negative and fractional ``pow``;
* normalisation layers: the variance plus ``eps`` outside ``inv_sqrt``'s domain (reported as the
  input's standard deviation) and ``eps`` below one fixed-point step;
* softmax rows longer than documented.

Only the example input is checked: other inputs may reach other values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from crypten_lite.protocols.domains import DOMAINS, RING, Domain, local_truncation_failure

__all__ = ["DomainIssue", "domain_report"]

aten = torch.ops.aten

_PRODUCTS = {
    aten.mm.default,
    aten.bmm.default,
    aten.addmm.default,
    aten.baddbmm.default,
    aten.convolution.default,
    aten.mul.Tensor,
    aten.mul.Scalar,
}
_SOFTMAX = {"_softmax", "_safe_softmax", "_log_softmax"}


@dataclass(frozen=True)
class DomainIssue:
    """One place where the plaintext run leaves a documented domain.

    Attributes:
        module: dotted name of the innermost module (``encoder.layer.3.output.LayerNorm``), or
            the model's class name for ops at its top level.
        kind: that module's class name.
        op: what is out of range (``layer_norm``, ``products``, ``exp``, ``values``, ...).
        detail: the measured value and the domain it leaves.
    """

    module: str
    kind: str
    op: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} `{self.module}` ({self.op}): {self.detail}"


class _Probe(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Runs each op, then checks its plaintext arguments and result against the table."""

    def __init__(self, frac_bits: int, truncation: str, failure_threshold: float) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.f = frac_bits
        self.local = truncation == "local"
        self.threshold = failure_threshold
        self.stack: list[tuple[str, str]] = []
        # (module, kind, op, topic) -> (severity, detail); the worst severity is kept.
        self.found: dict[tuple[str, str, str, str], tuple[float, str]] = {}
        # (module, kind) -> [expected local failures, largest product]
        self.failures: dict[tuple[str, str], list[float]] = {}

    # ------------------------------------------------------------------ bookkeeping
    def note(self, op: str, topic: str, severity: float, detail: str) -> None:
        module, kind = self.stack[-1] if self.stack else ("(top level)", "model")
        key = (module, kind, op, topic)
        old = self.found.get(key)
        if old is None or severity > old[0]:
            self.found[key] = (severity, detail)

    def issues(self) -> list[DomainIssue]:
        out = [DomainIssue(m, k, op, d) for (m, k, op, _), (_, d) in self.found.items()]
        total = sum(acc[0] for acc in self.failures.values())
        if self.local and total >= self.threshold:
            out.append(
                DomainIssue(
                    "(all modules)",
                    "model",
                    "products",
                    f"{total:.2g} expected local truncation failures per pass in user-level "
                    "products (the approximations' internal products add more: see "
                    "crypten_lite.protocols.truncation); CRYPTEN_LITE_TRUNCATION=dealer is exact",
                )
            )
        for (module, kind), (expected, largest) in self.failures.items():
            if expected >= self.threshold:
                per = (largest * 2.0 ** (2 * self.f) + 2.0**self.f) / 2.0**64
                out.append(
                    DomainIssue(
                        module,
                        kind,
                        "products",
                        f"products reach 2**{_log2(largest * 2.0 ** (2 * self.f)):.0f} at scale "
                        f"2**{2 * self.f}: local truncation fails with probability up to "
                        f"{per:.2g} per element, {expected:.2g} expected failures per pass "
                        "(CRYPTEN_LITE_TRUNCATION=dealer is exact)",
                    )
                )
        return out

    # ------------------------------------------------------------------ the checks
    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.check(func, args, kwargs, out)
        except (RuntimeError, TypeError, ValueError, IndexError):  # a check never breaks a run
            pass
        return out

    def check(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        name = _short(func)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and first.is_floating_point() and first.numel():
            # Attention masks (-inf, finfo.min) are public constants the ops treat as "masked"
            # (a documented rule of their own), not values to encode: left out here.
            finite = first[torch.isfinite(first) & (first > torch.finfo(first.dtype).min)]
            if finite.numel():
                top = float(finite.abs().max())
                limit = RING.value_limit(self.f)
                if top >= limit:
                    self.note(
                        name,
                        "values",
                        top,
                        f"values reach {top:.3g}, beyond the fixed-point range "
                        f"|x| < 2**{63 - self.f} = {limit:.3g}",
                    )
                if func in _PRODUCTS and self._real_product(func, args):
                    self.products(name, finite, top)
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
            return
        if func in (aten.exp.default, aten.exp_.default):
            self.upper("exp", name, x)
        elif func in (aten.log.default, aten.log_.default):
            self.outside("log", name, x, "arguments")
        elif func in (aten.reciprocal.default, aten.reciprocal_.default):
            self.outside("reciprocal", name, x, "arguments")
        elif func in (aten.div.Tensor, aten.div_.Tensor) and _secret_like(args[1]):
            self.outside("div", name, args[1], "divisors")
        elif func in (aten.sqrt.default, aten.sqrt_.default):
            self.outside("sqrt", name, x, "arguments")
        elif func in (aten.rsqrt.default, aten.rsqrt_.default):
            self.outside("inv_sqrt", name, x, "arguments")
        elif func in (aten.pow.Tensor_Scalar, aten.pow_.Scalar) and isinstance(
            args[1], float | int
        ):
            e = float(args[1])
            if e < 0:
                self.outside("inv_sqrt" if e == -0.5 else "reciprocal", name, x, "bases")
            elif not e.is_integer():
                self.outside("sqrt", name, x, "bases")
        elif name in _SOFTMAX:
            self.softmax(name, x, int(args[1]))
        elif "scaled_dot_product" in name and len(args) >= 2:
            # A fused attention kernel (plaintext CPU): the scores q k^T are a product and the
            # softmax runs over rows of the keys' length.
            scores = x.double() @ args[1].double().transpose(-1, -2)
            top = float(scores.abs().max())
            self.products(name, scores, top)
            self.softmax("_softmax", scores, -1)
        elif func == aten.native_layer_norm.default:
            dims = tuple(range(x.dim() - len(args[1]), x.dim()))
            var = x.double().var(dim=dims, unbiased=False)
            self.normalisation("layer_norm", var, float(args[4]))
        elif "batch_norm" in name:
            self.batch_norm(name, args)

    def products(self, name: str, values: torch.Tensor, top: float) -> None:
        limit = RING.product_limit(self.f)
        if top >= limit:
            self.note(
                name,
                "products",
                top,
                f"products reach 2**{_log2(top * 2.0 ** (2 * self.f)):.0f} at scale "
                f"2**{2 * self.f} ({top:.3g}): beyond the exact truncation's headroom "
                f"|x * y| < 2**{_log2(limit):.0f} ({limit:.3g})",
            )
        if self.local:
            module = self.stack[-1] if self.stack else ("(top level)", "model")
            acc = self.failures.setdefault(module, [0.0, 0.0])
            acc[0] += local_truncation_failure(values, self.f)
            acc[1] = max(acc[1], top)

    @staticmethod
    def _real_product(func: Any, args: tuple[Any, ...]) -> bool:
        """A product that is truncated: not a multiplication by a public integer."""
        if func in (aten.mul.Scalar, aten.mul.Tensor):
            # A real (floating) multiplier is encoded and the product truncated; an integer
            # one (int, bool, integer tensor) multiplies the share exactly.
            other = args[1]
            if isinstance(other, torch.Tensor):
                return other.is_floating_point()
            return isinstance(other, float)
        return True

    def upper(self, op: str, name: str, x: torch.Tensor) -> None:
        d = DOMAINS[op]
        top = float(x.max())
        if d.hi is not None and top >= d.hi:
            self.note(op, "hi", top, f"{op} arguments up to {top:.3g} (domain {d.describe()})")

    def outside(self, op: str, name: str, x: torch.Tensor, what: str) -> None:
        d = DOMAINS[op]
        bad = ~d.inside(x.detach().double())
        n = int(bad.sum())
        if n:
            vals = x.detach().double()[bad]
            mags = vals.abs() if d.on_magnitude else vals
            lo, hi = float(mags.min()), float(mags.max())
            self.note(
                op,
                "domain",
                n / x.numel(),
                f"{n} of {x.numel()} {what} outside the domain {d.describe()} "
                f"(they range over [{lo:.3g}, {hi:.3g}])",
            )

    def softmax(self, name: str, x: torch.Tensor, dim: int) -> None:
        d = DOMAINS["log_softmax" if "log" in name else "softmax"]
        n = x.shape[dim] if x.dim() else 1
        if d.max_row is not None and n > d.max_row:
            self.note(
                d.name,
                "rows",
                n,
                f"rows of {n} elements; its error ({d.abs_error:g}) is documented for at most "
                f"{d.max_row} per row",
            )

    def normalisation(self, op: str, var: torch.Tensor, eps: float) -> None:
        d: Domain = DOMAINS["inv_sqrt"]
        eps_domain = DOMAINS["normalization_eps"]
        eps_ok = bool(eps_domain.inside(torch.tensor(eps, dtype=torch.float64)))
        if eps > 0 and not eps_ok:
            self.note(
                op,
                "eps",
                1.0,
                f"eps {eps:g} is outside {eps_domain.describe()}: below one fixed-point step "
                f"2**-{self.f} it encodes as 0",
            )
        v = var + (eps if eps_ok else 0.0)
        std = var.clamp(min=0).sqrt()
        lo_v, hi_v = d.lo or 0.0, d.hi or math.inf
        if bool((v >= hi_v).any()):
            top = float(std.max())
            self.note(
                op,
                "std-high",
                top,
                f"input std up to {top:.3g}: variance + eps leaves inv_sqrt's domain "
                f"{d.describe()} (std below {math.sqrt(hi_v):.3g})",
            )
        if bool((v < lo_v).any()):
            low = float(std.min())
            self.note(
                op,
                "std-low",
                -low,
                f"input std down to {low:.3g}: variance + eps leaves inv_sqrt's domain "
                f"{d.describe()} (std at least {math.sqrt(lo_v):.3g})",
            )

    def batch_norm(self, name: str, args: tuple[Any, ...]) -> None:
        # native_batch_norm(input, weight, bias, running_mean, running_var, training, momentum,
        # eps) and its _native_batch_norm_legit variants share the leading arguments.
        x = args[0]
        training = next((a for a in args[5:7] if isinstance(a, bool)), True)
        eps = float(args[-1])
        if training or args[4] is None:
            dims = [0] + list(range(2, x.dim()))
            var = x.double().var(dim=dims, unbiased=False)
        else:
            var = args[4].double()
        self.normalisation("batch_norm", var, eps)


def _short(func: Any) -> str:
    """``aten.addmm.default`` -> ``addmm``; ``aten.mul.Tensor`` -> ``mul``."""
    parts = str(func).split(".")
    return parts[1] if len(parts) >= 2 else str(func)


def _secret_like(value: Any) -> bool:
    """A tensor divisor (a secret in an encrypted run), not a Python number."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0


def _log2(v: float) -> float:
    return math.log2(v) if v > 0 else -math.inf


def domain_report(
    model: torch.nn.Module,
    inputs: Sequence[Any],
    *,
    frac_bits: int = 16,
    truncation: str = "auto",
    failure_threshold: float = 1e-6,
) -> list[DomainIssue]:
    """Run ``model`` (a copy, not modified) in plaintext on ``inputs`` and list the issues.

    Args:
        model: a plaintext ``torch.nn.Module`` (in the mode it will run in: train or eval).
        inputs: positional inputs.
        frac_bits: the session's ``f``.
        truncation: the session's truncation method; with ``local``, modules whose products
            expect at least ``failure_threshold`` local truncation failures per pass are listed.

    Returns:
        One :class:`DomainIssue` per module, op and kind of problem (the worst case of each).
    """
    net = copy.deepcopy(model)
    probe = _Probe(frac_bits, truncation, failure_threshold)
    handles = []
    for mod_name, mod in net.named_modules():
        label = mod_name or "(top level)"

        def push(_m: Any, _a: Any, label: str = label, kind: str = type(mod).__name__) -> None:
            probe.stack.append((label, kind))

        def pop(_m: Any, _a: Any, _o: Any) -> None:
            if probe.stack:
                probe.stack.pop()

        handles.append(mod.register_forward_pre_hook(push))
        handles.append(mod.register_forward_hook(pop))
    plain = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in inputs]
    limit = RING.value_limit(frac_bits)
    for i, leaf in enumerate(tree_flatten(plain)[0]):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.numel():
            top_in = float(leaf.detach().double().abs().max())
            if top_in >= limit:
                probe.stack.append((f"input {i}", "input"))
                probe.note(
                    "cryptensor",
                    "values",
                    top_in,
                    f"input values reach {top_in:.3g}, "
                    f"beyond the fixed-point range |x| < {limit:.3g}",
                )
                probe.stack.pop()
    try:
        with torch.no_grad(), probe:
            net(*plain)
    finally:
        for h in handles:
            h.remove()
    return probe.issues()
