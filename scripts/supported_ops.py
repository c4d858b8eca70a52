"""Generate the README's table of what runs on encrypted tensors, from the code itself.

The aten ops come straight from the dispatch table (``crypten_lite.tensor.registered_ops()``,
grouped by op family); the ``torch.nn`` modules are probed with ``crypten_lite.check_model``,
which runs each module forward and backward on fake encrypted tensors through that same table
(no parties, no messages) and lists every op it is missing. So the README cannot drift from the
code: regenerate it, or let the test fail.

Usage::

    python scripts/supported_ops.py                    # print the Markdown block
    python scripts/supported_ops.py --write README.md  # replace the block in README.md
    python scripts/supported_ops.py --check README.md  # exit 1 if README.md's block is stale

The block sits between ``<!-- supported-ops:begin -->`` and ``<!-- supported-ops:end -->``.
Exit codes: 0 up to date (or written), 1 stale, 2 the file has no (or broken) markers.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import crypten_lite
import crypten_lite.ops  # noqa: F401 - fills the op table
from crypten_lite.tensor import registered_ops

BEGIN = "<!-- supported-ops:begin -->"
END = "<!-- supported-ops:end -->"

# --------------------------------------------------------------------------- nn modules probed


def _x(*shape: int) -> torch.Tensor:
    return torch.linspace(-2.0, 2.0, int(torch.tensor(shape).prod())).reshape(shape)


def _probability(*shape: int) -> torch.Tensor:
    return torch.linspace(0.05, 0.95, int(torch.tensor(shape).prod())).reshape(shape)


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


# (name, module factory, example input(s)). Loss modules get (input, target); integer targets
# stay public, floating ones are encrypted like the inputs. Keep the list sorted by section.
_Probe = tuple[str, Callable[[], nn.Module], Callable[[], Any]]
MODULES: dict[str, list[_Probe]] = {
    "Linear and convolution": [
        ("Linear", lambda: nn.Linear(4, 3), lambda: _x(2, 4)),
        ("Bilinear", lambda: nn.Bilinear(4, 3, 2), lambda: (_x(2, 4), _x(2, 3))),
        ("Conv1d", lambda: nn.Conv1d(2, 3, 3, padding=1), lambda: _x(2, 2, 6)),
        ("Conv2d", lambda: nn.Conv2d(2, 3, 3, padding=1), lambda: _x(2, 2, 5, 5)),
        ("ConvTranspose2d", lambda: nn.ConvTranspose2d(2, 3, 2, stride=2), lambda: _x(2, 2, 3, 3)),
        ("Embedding", lambda: nn.Embedding(6, 4), lambda: _labels(5, 6)),
        (
            "EmbeddingBag",
            lambda: nn.EmbeddingBag(6, 4, mode="mean"),
            lambda: (_labels(5, 6), torch.tensor([0, 2])),
        ),
        ("Flatten", lambda: nn.Flatten(), lambda: _x(2, 3, 4)),
        ("Identity", lambda: nn.Identity(), lambda: _x(2, 3)),
    ],
    "Activations": [
        ("ReLU", lambda: nn.ReLU(), lambda: _x(2, 5)),
        ("ReLU6", lambda: nn.ReLU6(), lambda: _x(2, 5)),
        ("LeakyReLU", lambda: nn.LeakyReLU(0.1), lambda: _x(2, 5)),
        ("Hardtanh", lambda: nn.Hardtanh(), lambda: _x(2, 5)),
        ("ELU", lambda: nn.ELU(), lambda: _x(2, 5)),
        ("CELU", lambda: nn.CELU(), lambda: _x(2, 5)),
        ("SELU", lambda: nn.SELU(), lambda: _x(2, 5)),
        ("Hardsigmoid", lambda: nn.Hardsigmoid(), lambda: _x(2, 5)),
        ("Hardswish", lambda: nn.Hardswish(), lambda: _x(2, 5)),
        ("Sigmoid", lambda: nn.Sigmoid(), lambda: _x(2, 5)),
        ("Tanh", lambda: nn.Tanh(), lambda: _x(2, 5)),
        ("GELU", lambda: nn.GELU(), lambda: _x(2, 5)),
        ("SiLU", lambda: nn.SiLU(), lambda: _x(2, 5)),
        ("Softplus", lambda: nn.Softplus(), lambda: _x(2, 5)),
        ("Mish", lambda: nn.Mish(), lambda: _x(2, 5)),
        ("Softmax", lambda: nn.Softmax(dim=-1), lambda: _x(2, 5)),
        ("LogSoftmax", lambda: nn.LogSoftmax(dim=-1), lambda: _x(2, 5)),
    ],
    "Normalisation, pooling, dropout": [
        ("BatchNorm1d", lambda: nn.BatchNorm1d(3), lambda: _x(4, 3)),
        ("BatchNorm2d", lambda: nn.BatchNorm2d(3), lambda: _x(2, 3, 4, 4)),
        ("LayerNorm", lambda: nn.LayerNorm(5), lambda: _x(2, 5)),
        ("GroupNorm", lambda: nn.GroupNorm(2, 4), lambda: _x(2, 4, 3)),
        ("InstanceNorm1d", lambda: nn.InstanceNorm1d(3), lambda: _x(2, 3, 4)),
        (
            "InstanceNorm2d",
            lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
            lambda: _x(2, 3, 4, 4),
        ),
        ("MaxPool2d", lambda: nn.MaxPool2d(2), lambda: _x(2, 3, 4, 4)),
        ("AvgPool2d", lambda: nn.AvgPool2d(2), lambda: _x(2, 3, 4, 4)),
        ("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d(1), lambda: _x(2, 3, 4, 4)),
        ("AdaptiveMaxPool2d", lambda: nn.AdaptiveMaxPool2d(1), lambda: _x(2, 3, 4, 4)),
        ("Dropout", lambda: nn.Dropout(0.5), lambda: _x(2, 5)),
    ],
    "Resampling": [
        ("Upsample", lambda: nn.Upsample(scale_factor=2), lambda: _x(1, 2, 3, 3)),
        (
            "Upsample(mode='bilinear')",
            lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
            lambda: _x(1, 2, 3, 3),
        ),
        ("PixelShuffle", lambda: nn.PixelShuffle(2), lambda: _x(1, 8, 2, 2)),
        ("PixelUnshuffle", lambda: nn.PixelUnshuffle(2), lambda: _x(1, 2, 4, 4)),
    ],
    "Recurrent": [
        ("LSTM", lambda: nn.LSTM(3, 4), lambda: _x(5, 2, 3)),
        ("GRU", lambda: nn.GRU(3, 4), lambda: _x(5, 2, 3)),
        ("RNN", lambda: nn.RNN(3, 4), lambda: _x(5, 2, 3)),
        ("LSTMCell", lambda: nn.LSTMCell(3, 4), lambda: _x(2, 3)),
        ("GRUCell", lambda: nn.GRUCell(3, 4), lambda: _x(2, 3)),
        ("RNNCell", lambda: nn.RNNCell(3, 4), lambda: _x(2, 3)),
    ],
    "Attention and transformers": [
        (
            "MultiheadAttention",
            lambda: _SelfAttention(nn.MultiheadAttention(8, 2, batch_first=True)),
            lambda: _x(2, 3, 8),
        ),
        (
            "TransformerEncoderLayer",
            lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True),
            lambda: _x(2, 3, 8),
        ),
        (
            "TransformerDecoderLayer",
            lambda: _SelfDecoder(
                nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            ),
            lambda: _x(2, 3, 8),
        ),
    ],
    "Losses": [
        ("MSELoss", lambda: nn.MSELoss(), lambda: (_x(4, 3), _x(4, 3).flip(0))),
        ("L1Loss", lambda: nn.L1Loss(), lambda: (_x(4, 3), _x(4, 3).flip(0))),
        ("SmoothL1Loss", lambda: nn.SmoothL1Loss(), lambda: (_x(4, 3), _x(4, 3).flip(0))),
        ("HuberLoss", lambda: nn.HuberLoss(), lambda: (_x(4, 3), _x(4, 3).flip(0))),
        ("CrossEntropyLoss", lambda: nn.CrossEntropyLoss(), lambda: (_x(4, 3), _labels(4, 3))),
        ("NLLLoss", lambda: nn.NLLLoss(), lambda: (_x(4, 3), _labels(4, 3))),
        ("BCELoss", lambda: nn.BCELoss(), lambda: (_probability(4), _labels(4, 2).float())),
        (
            "BCEWithLogitsLoss",
            lambda: nn.BCEWithLogitsLoss(),
            lambda: (_x(4), _labels(4, 2).float()),
        ),
        (
            "KLDivLoss",
            lambda: nn.KLDivLoss(reduction="batchmean"),
            lambda: (_x(4, 3), _probability(4, 3)),
        ),
    ],
}


class _SelfAttention(nn.Module):
    """``MultiheadAttention`` called as self-attention, returning the output only."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, need_weights=False)[0]


class _SelfDecoder(nn.Module):
    """A decoder layer attending to its own input as memory."""

    def __init__(self, layer: nn.TransformerDecoderLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, x)


def probe(factory: Callable[[], nn.Module], example: Callable[[], Any]) -> tuple[str, str]:
    """(forward, backward) support of one module: ``yes`` or the first missing op."""
    torch.manual_seed(0)
    module = factory().train()
    inputs = example()
    cells = []
    for backward in (False, True):
        report = crypten_lite.check_model(module, inputs, backward=backward)
        if report.ok:
            cells.append("yes")
        else:
            missing = report.ops[0]
            cells.append(f"no: `{missing}`" if missing != "error" else "no (error)")
    return cells[0], cells[1]


# --------------------------------------------------------------------------- core aten coverage

# Which of torch's *core aten operator set* (the ops tagged ``torch.Tag.core``: what torch
# decomposes every other op into) count towards coverage. This is the one place the exclusion
# rule lives: an op is left out only when it has no meaning on an encrypted real-valued tensor.
# Every other core op counts, supported or not (rounding, ``atan2``, 3-d pooling, ... are
# counted and listed as missing until implemented).
_EXCLUDED_FAMILIES = {
    # complex numbers: an encrypted tensor is real-valued
    "_fft_c2r": "complex",
    "_fft_r2c": "complex",
    # bit operations on integer bit patterns (their bool use is covered by logical_and/or/not)
    "bitwise_and": "bitwise on integers",
    "bitwise_or": "bitwise on integers",
    "bitwise_xor": "bitwise on integers",
    "bitwise_not": "bitwise on integers",
    # the output *shape* is the secret (which entries are non-zero): no oblivious form
    "nonzero": "data-dependent output shape",
}


def _exclusion(op: Any) -> str | None:
    """Why a core op does not count towards coverage, or ``None`` when it counts."""
    family = op.overloadpacket.__name__
    if family in _EXCLUDED_FAMILIES:
        return _EXCLUDED_FAMILIES[family]
    if family.startswith("sym_"):  # sym_size, sym_stride, ...: torch answers from the wrapper
        return "symbolic shape query"
    if op._overloadname == "out" or op._schema.is_mutable:
        return "out= / mutating variant (its functional form counts)"
    if not any("Tensor" in str(arg.type) for arg in op._schema.arguments):
        return "factory without a tensor input (never sees an encrypted tensor)"
    return None


def core_aten_ops() -> list[Any]:
    """Every overload of ``torch.ops.aten`` tagged ``torch.Tag.core``, sorted by name."""
    # ``dir(torch.ops.aten)`` lists only the packets touched so far; the schema registry has all.
    names = {
        schema.name.split("::", 1)[1]
        for schema in torch._C._jit_get_all_schemas()
        if schema.name.startswith("aten::")
    }
    ops = []
    for name in sorted(names):
        packet = getattr(torch.ops.aten, name, None)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if torch.Tag.core in op.tags:
                ops.append(op)
    return sorted(ops, key=str)


def core_coverage() -> tuple[int, int, list[str]]:
    """``(covered, total, missing names)`` over the counted core aten ops."""
    registered = set(registered_ops())
    counted = [str(op) for op in core_aten_ops() if _exclusion(op) is None]
    missing = [name for name in counted if name not in registered]
    return len(counted) - len(missing), len(counted), missing


def _coverage_lines() -> list[str]:
    covered, total, missing = core_coverage()
    excluded = sorted({reason for op in core_aten_ops() if (reason := _exclusion(op))})
    names = ", ".join(f"`{m.removeprefix('aten.')}`" for m in missing)
    return [
        "",
        f"Coverage of torch's core aten operator set (torch {torch.__version__.split('+')[0]}, "
        f"ops tagged `torch.Tag.core`): **{covered} / {total}** covered. Not counted: "
        f"{'; '.join(excluded)} (rule: `_exclusion` in `scripts/supported_ops.py`). "
        f"Missing ({len(missing)}): {names or 'none'}.",
    ]


# --------------------------------------------------------------------------- the Markdown


def _ops_by_family() -> dict[str, list[str]]:
    """``{family: [op names]}``: overloads of one op joined (``add.Scalar/Tensor``; not ``|``,
    which splits a Markdown table cell even inside backticks)."""
    grouped: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, family in registered_ops().items():
        base, _, overload = name.removeprefix("aten.").partition(".")
        grouped[family][base].append(overload)
    out = {}
    for family in sorted(grouped):
        names = []
        for base, overloads in sorted(grouped[family].items()):
            kinds = [o for o in overloads if o != "default"]
            if "default" in overloads and kinds:
                kinds.insert(0, "default")
            names.append(f"{base}.{'/'.join(kinds)}" if kinds else base)
        out[family] = names
    return out


@functools.cache
def render() -> str:
    """The generated Markdown block, markers included.

    Cached: the op table is complete once ``crypten_lite.ops`` is imported, and probing every
    module (forward and backward on fake tensors) is the slow part of a ``--check``.
    """
    lines = [
        BEGIN,
        "<!-- generated by scripts/supported_ops.py from the dispatch table; do not edit -->",
        "",
        "`torch.nn` modules, checked forward and backward on fake encrypted tensors "
        '(`crypten_lite.check_model`); "no" names the first missing aten op:',
        "",
        "| module | forward | backward |",
        "| --- | --- | --- |",
    ]
    for section, probes in MODULES.items():
        lines.append(f"| **{section}** | | |")
        for name, factory, example in probes:
            forward, backward = probe(factory, example)
            lines.append(f"| `nn.{name}` | {forward} | {backward} |")
    lines += _coverage_lines()
    families = _ops_by_family()
    total = len(registered_ops())
    lines += [
        "",
        f"aten ops with an MPC implementation ({total} overloads; any other op raises "
        "`UnsupportedOperationError` naming it):",
        "",
        "| family | ops |",
        "| --- | --- |",
    ]
    for family, names in families.items():
        lines.append(f"| {family} | {', '.join(f'`{n}`' for n in names)} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def split_readme(text: str) -> tuple[str, str, str] | None:
    """``(before, block, after)`` around the markers, or ``None`` when they are missing."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    end += len(END)
    if text[end : end + 1] == "\n":
        end += 1
    return text[:start], text[start:end], text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", metavar="README", help="exit 1 if README's block is stale")
    mode.add_argument("--write", metavar="README", help="replace README's block in place")
    args = parser.parse_args(argv)
    block = render()
    path = args.check or args.write
    if path is None:
        sys.stdout.write(block)
        return 0
    text = Path(path).read_text(encoding="utf-8")
    parts = split_readme(text)
    if parts is None:
        print(f"{path}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    before, current, after = parts
    if args.write:
        Path(path).write_text(before + block + after, encoding="utf-8")
        print(f"{path}: supported-ops block {'unchanged' if current == block else 'updated'}")
        return 0
    if current == block:
        print(f"{path}: supported-ops block is up to date")
        return 0
    diff = difflib.unified_diff(
        current.splitlines(), block.splitlines(), f"{path} (current)", "generated", lineterm=""
    )
    print("\n".join(diff), file=sys.stderr)
    print(
        f"{path}: the supported-ops block is stale; run "
        f"`python scripts/supported_ops.py --write {path}`",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
