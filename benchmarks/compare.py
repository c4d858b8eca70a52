#!/usr/bin/env python3
"""Side-by-side tables of two benchmarks (``bench.py`` and the peer's ``bench_crypten.py``).

Usage::

    python benchmarks/compare.py OURS.json CRYPTEN.json [--markdown] [--no-targets]
    python benchmarks/compare.py ours1.json,ours2.json crypten1.json,crypten2.json --markdown

``A`` (first argument) is normally crypten_lite, ``B`` CrypTen; the ratio column is ``B / A``
(above 1: A is faster). Each side may be a comma list of runs of the same benchmark: a
workload's time is then the median over the runs of each run's median, with the min-max over
the runs in brackets (the peer's ``results.md`` convention); counts and errors come from the
first run (they do not depend on timing).

Columns: median wall time of each; rounds; bytes per party in CrypTen's convention (sent +
received, ``bytes_rank0``); accuracy (max abs error; mismatches for comparisons; argmax
agreement for inference); the plaintext time and the MPC / plaintext ratio of each run. Training
rows show per-step times and counts, the last step's loss, the full-data loss and accuracy of
the final weights evaluated in plaintext, each against plaintext SGD.

Targets (``--no-targets`` drops the column), checked for A against B:

* every workload: time <= 1/3 of B's;
* non-linear micro-ops, inference and training: rounds <= B's (A's dealer round trips, shown
  as ``+Nd``, are added: CrypTen's TTP counts its party-TTP calls as rounds);
* comparisons (``lt``, ``relu``): rounds and bytes <= 1/2 of B's;
* inference: argmax agreement 100 %;
* training: the final weights' full-data loss at least as close to plaintext's as B's (the
  median over the runs of ``|loss - plaintext loss|``: local truncation makes it vary a little).
* transformer (issue 13): time <= 1/5 of B's, <= 40 rounds per layer (dealer round trips
  added), max abs error <= 1e-2 and no worse than B's.

Rows only one side has (A's ``extra`` rows, e.g. ``*_reuse``) are listed after the tables,
against B's base workload where there is one. Each run's ``[load]`` record is shown, since a
busy machine inflates wall times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

GROUPS = ("micro", "inference", "training", "transformer", "large")
ARITHMETIC = {"mul_1e6", "matmul_256", "conv2d_1x1x28x28_6x5x5", "mul_1", "add_1"}
COMPARISONS = {"lt_1e5", "relu_1e5"}


# --------------------------------------------------------------------------- loading
@dataclass
class Side:
    """One benchmark: its runs (JSON files) and a label."""

    paths: list[str]
    runs: list[dict[str, Any]]

    @classmethod
    def load(cls, spec: str) -> Side:
        paths = [p for p in spec.split(",") if p]
        runs = []
        for p in paths:
            with open(p) as f:
                runs.append(json.load(f))
        return cls(paths, runs)

    @property
    def label(self) -> str:
        env = self.runs[0].get("env", {})
        name = "crypten_lite" if "crypten_lite" in env else ("CrypTen" if "crypten" in env else "?")
        provider = env.get("provider")
        return f"{name} {provider}" if provider else name

    def rows(self, group: str) -> dict[str, dict[str, Any]]:
        return dict(self.runs[0].get(group, {}))

    def times(self, group: str, name: str, key: str) -> list[float]:
        return [r[group][name][key] for r in self.runs if name in r.get(group, {})]


def _time_key(group: str) -> str:
    return "mpc_step_median_s" if group == "training" else "mpc_median_s"


def _plain_key(group: str) -> str:
    return "plain_step_median_s" if group == "training" else "plain_median_s"


# --------------------------------------------------------------------------- formatting
def fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def fmt_b(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return str(n)


def fmt_times(ts: list[float]) -> str:
    """Median over runs, with the min-max over runs when there are several."""
    if not ts:
        return "-"
    med = statistics.median(ts)
    if len(ts) == 1:
        return fmt_s(med)
    scale, unit = (1e3, "ms") if med >= 1e-3 else (1e6, "us")
    return f"{med * scale:.2f} {unit} ({min(ts) * scale:.1f}-{max(ts) * scale:.1f})"


def fmt_ratio(b: float | None, a: float | None) -> str:
    if a is None or b is None or a == 0:
        return "-"
    return f"{b / a:.2f}x"


def _median(ts: list[float]) -> float | None:
    return statistics.median(ts) if ts else None


def _accuracy(row: dict[str, Any]) -> str:
    if "mismatches" in row:
        return f"{row['mismatches']} wrong"
    text = f"{row['max_abs_err']:.1e}" if "max_abs_err" in row else "-"
    if "argmax_agreement" in row:
        text += f", argmax {row['argmax_agreement']:.0%}"
    return text


def _rounds(row: dict[str, Any], group: str) -> tuple[int | None, str]:
    """Rounds of one call (or step) and their text; crypten_lite's dealer round trips are
    added and shown as ``+Nd`` (CrypTen's TTP counts its party-TTP calls in ``rounds``)."""
    if group == "training":
        r, d = row.get("rounds_per_step"), row.get("dealer_round_trips_per_step_rank0", 0)
    else:
        r, d = row.get("rounds"), row.get("dealer_round_trips_rank0", 0)
    if r is None:
        return None, "-"
    return r + d, f"{r}+{d}d" if d else str(r)


# --------------------------------------------------------------------------- targets
def _check(ok: bool, what: str, failures: list[str]) -> None:
    if not ok:
        failures.append(what)


def loss_gap(side: Side, name: str) -> float | None:
    """Median over the runs of ``|full-data loss of the final weights - plaintext's|``."""
    gaps = [
        abs(
            r["training"][name]["final_full_loss_mpc"]
            - r["training"][name]["final_full_loss_plain"]
        )
        for r in side.runs
        if name in r.get("training", {}) and "final_full_loss_mpc" in r["training"][name]
    ]
    return statistics.median(gaps) if gaps else None


def _fmt_gap(gap: float | None) -> str:
    return "-" if gap is None else f"{gap:.1e}"


def targets(
    group: str,
    name: str,
    ta: float,
    tb: float,
    a: dict[str, Any],
    b: dict[str, Any],
    gaps: tuple[float | None, float | None] = (None, None),
) -> str:
    """``met`` or what is missed (see the module docstring)."""
    failures: list[str] = []
    speedup = 5 if group == "transformer" else 3
    _check(ta <= tb / speedup, f"time {tb / ta:.2f}x < {speedup}x", failures)
    bytes_key = "bytes_per_step_rank0" if group == "training" else "bytes_rank0"
    ra, rb = _rounds(a, group)[0], _rounds(b, group)[0]
    if name not in ARITHMETIC and ra is not None and rb is not None:
        if name in COMPARISONS:
            _check(2 * ra <= rb, f"rounds {ra} > {rb}/2", failures)
            ba, bb = a.get(bytes_key, 0), b.get(bytes_key, 0)
            _check(2 * ba <= bb, f"bytes {fmt_b(ba)} > 1/2 of {fmt_b(bb)}", failures)
        else:
            _check(ra <= rb, f"rounds {ra} > {rb}", failures)
    if group == "transformer":
        if ra is not None:
            _check(ra <= 40, f"rounds {ra} > 40", failures)
        ea, eb = a.get("max_abs_err"), b.get("max_abs_err")
        if ea is not None and eb is not None:
            _check(ea <= 1e-2 and ea <= eb, f"error {ea:.1e} > min(1e-2, {eb:.1e})", failures)
    if group == "inference" and "argmax_agreement" in a:
        _check(a["argmax_agreement"] >= 1.0, f"argmax {a['argmax_agreement']:.0%}", failures)
    da, db = gaps
    if group == "training" and da is not None and db is not None:
        _check(da <= db, f"loss gap {da:.1e} > {db:.1e}", failures)
    return "met" if not failures else "MISSED: " + "; ".join(failures)


# --------------------------------------------------------------------------- tables
Line = list[str]


def _render(cols: Line, lines: list[Line], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        return out + ["| " + " | ".join(row) + " |" for row in lines]
    widths = [max(len(c), *(len(r[i]) for r in lines)) for i, c in enumerate(cols)]

    def fmt(row: Line) -> str:
        return "  ".join(
            v.rjust(w) if i else v.ljust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )

    head = fmt(cols)
    return [head, "-" * len(head), *(fmt(r) for r in lines)]


def timed_table(group: str, a: Side, b: Side, with_targets: bool) -> tuple[Line, list[Line]]:
    ra, rb = a.rows(group), b.rows(group)
    cols = [
        "workload",
        "A ms",
        "B ms",
        "B/A",
        "rounds A / B",
        "bytes/party A / B",
        "accuracy A / B",
        "plain A / B",
        "MPC/plain A / B",
    ]
    if with_targets:
        cols.append("targets")
    lines = []
    tk, pk = _time_key(group), _plain_key(group)
    for name in [n for n in ra if n in rb]:
        x, y = ra[name], rb[name]
        ta, tb = a.times(group, name, tk), b.times(group, name, tk)
        pa, pb = _median(a.times(group, name, pk)), _median(b.times(group, name, pk))
        ma, mb = _median(ta), _median(tb)
        line = [
            name,
            fmt_times(ta),
            fmt_times(tb),
            fmt_ratio(mb, ma),
            f"{_rounds(x, group)[1]} / {_rounds(y, group)[1]}",
            f"{fmt_b(x['bytes_rank0'])} / {fmt_b(y['bytes_rank0'])}",
            f"{_accuracy(x)} / {_accuracy(y)}",
            f"{fmt_s(pa)} / {fmt_s(pb)}",
            f"{ma / pa:,.0f}x / {mb / pb:,.0f}x" if ma and mb and pa and pb else "-",
        ]
        if with_targets:
            assert ma is not None and mb is not None
            line.append(targets(group, name, ma, mb, x, y))
        lines.append(line)
    return cols, lines


def training_table(a: Side, b: Side, with_targets: bool) -> tuple[Line, list[Line]]:
    group = "training"
    ra, rb = a.rows(group), b.rows(group)
    cols = [
        "workload",
        "A ms/step",
        "B ms/step",
        "B/A",
        "rounds/step A / B",
        "bytes/party/step A / B",
        "last-step loss A / B / plain",
        "max loss diff A / B",
        "full-data loss A / B / plain",
        "its gap to plain A / B",
        "train acc A / B / plain",
        "plain/step",
        "MPC/plain A / B",
    ]
    if with_targets:
        cols.append("targets")
    lines = []
    for name in [n for n in ra if n in rb]:
        x, y = ra[name], rb[name]
        ta = a.times(group, name, "mpc_step_median_s")
        tb = b.times(group, name, "mpc_step_median_s")
        pa = _median(a.times(group, name, "plain_step_median_s"))
        pb = _median(b.times(group, name, "plain_step_median_s"))
        ma, mb = _median(ta), _median(tb)

        def loss_diff(r: dict[str, Any]) -> str:
            pairs = zip(r["mpc_losses"], r["plain_losses"], strict=True)
            return f"{max(abs(u - v) for u, v in pairs):.1e}"

        line = [
            name,
            fmt_times(ta),
            fmt_times(tb),
            fmt_ratio(mb, ma),
            f"{_rounds(x, group)[1]} / {_rounds(y, group)[1]}",
            f"{fmt_b(x['bytes_per_step_rank0'])} / {fmt_b(y['bytes_per_step_rank0'])}",
            f"{x['final_step_loss_mpc']:.4f} / {y['final_step_loss_mpc']:.4f} / "
            f"{x['final_step_loss_plain']:.4f}",
            f"{loss_diff(x)} / {loss_diff(y)}",
            f"{x['final_full_loss_mpc']:.4f} / {y['final_full_loss_mpc']:.4f} / "
            f"{x['final_full_loss_plain']:.4f}",
            f"{_fmt_gap(loss_gap(a, name))} / {_fmt_gap(loss_gap(b, name))}",
            f"{x['train_acc_mpc']:.3f} / {y['train_acc_mpc']:.3f} / {x['train_acc_plain']:.3f}",
            f"{fmt_s(pa)} / {fmt_s(pb)}",
            f"{ma / pa:,.0f}x / {mb / pb:,.0f}x" if ma and mb and pa and pb else "-",
        ]
        if with_targets:
            assert ma is not None and mb is not None
            gaps = (loss_gap(a, name), loss_gap(b, name))
            line.append(targets(group, name, ma, mb, x, y, gaps))
        lines.append(line)
    return cols, lines


def extras(a: Side, b: Side) -> list[str]:
    """A's rows without a B counterpart, against B's base workload where there is one."""
    out = []
    for group in GROUPS:
        ra, rb = a.rows(group), b.rows(group)
        tk = _time_key(group)
        for name, row in ra.items():
            if name in rb:
                continue
            base = row.get("base")
            ma = _median(a.times(group, name, tk))
            text = f"- `{name}` (A only{', extra' if row.get('extra') else ''}): {fmt_s(ma)}"
            if "rounds" in row:
                text += f", {row['rounds']} rounds, {fmt_b(row['bytes_rank0'])}/party"
            if "argmax_agreement" in row:
                text += f", argmax {row['argmax_agreement']:.0%}"
            if base and base in rb:
                mb = _median(b.times(group, base, tk))
                text += f"; B's `{base}`: {fmt_s(mb)} (B/A {fmt_ratio(mb, ma)})"
            out.append(text)
        out += [f"- `{n}` (B only)" for n in rb if n not in ra]
    return out


def load_lines(side: Side, label: str) -> list[str]:
    out = []
    for path, run in zip(side.paths, side.runs, strict=True):
        parts = []
        for group in GROUPS:
            load = run.get(f"load_{group}")
            if load:
                parts.append(f"{group} {load.get('foreign_cores_avg', 0):.2f}")
        env = run.get("env", {})
        la = env.get("loadavg_start")
        start = f", loadavg at start {la[0]:.2f}" if la else ""
        out.append(
            f"- {label} `{path}` ({env.get('started', '?')}{start}): cores used by other "
            f"processes during each group: {', '.join(parts) or 'not recorded'}"
        )
    return out


def report(a: Side, b: Side, markdown: bool = False, with_targets: bool = True) -> str:
    out = [
        f"A = {a.label} ({len(a.runs)} run{'s' * (len(a.runs) > 1)}), "
        f"B = {b.label} ({len(b.runs)} run{'s' * (len(b.runs) > 1)}); B/A > 1: A is faster.",
        "",
    ]
    titles = {
        "micro": "micro-ops",
        "inference": "private inference",
        "transformer": "transformer layers",
        "large": "large models",
    }
    for group in GROUPS:
        if group == "training":
            cols, lines = training_table(a, b, with_targets)
        else:
            cols, lines = timed_table(group, a, b, with_targets)
        if not lines:
            continue
        out.append(f"{'### ' if markdown else '== '}{titles.get(group, 'private training')}")
        out.append("")
        out += _render(cols, lines, markdown)
        out.append("")
    more = extras(a, b)
    if more:
        out += ["Rows on one side only:", "", *more, ""]
    out.append(
        "bytes/party: CrypTen's convention (sent + received by party 0, 8 B per ring element "
        "for CrypTen; crypten_lite counts the payload it actually sends and receives)."
    )
    out += ["", "Machine load:", "", *load_lines(a, "A"), *load_lines(b, "B")]
    return "\n".join(out)


def summary(a: Side, b: Side) -> dict[str, list[str]]:
    """``{"met": [...], "missed": [...]}`` workload names (for scripts)."""
    got: dict[str, list[str]] = {"met": [], "missed": []}
    for group in GROUPS:
        fn: Callable[..., tuple[Line, list[Line]]] = (
            training_table if group == "training" else lambda *x, g=group: timed_table(g, *x)
        )
        _, lines = fn(a, b, True)
        for line in lines:
            got["met" if line[-1] == "met" else "missed"].append(line[0])
    return got


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("a", help="A: JSON file(s), comma-separated (normally crypten_lite)")
    ap.add_argument("b", help="B: JSON file(s), comma-separated (normally CrypTen)")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--no-targets", action="store_true", help="omit the targets column")
    args = ap.parse_args(argv)
    a, b = Side.load(args.a), Side.load(args.b)
    print(report(a, b, args.markdown, not args.no_targets))
    if not args.no_targets:
        s = summary(a, b)
        print(
            f"\ntargets met: {len(s['met'])}; missed: {len(s['missed'])} ({', '.join(s['missed'])})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
