#!/usr/bin/env python3
"""Benchmark crypten_lite against plaintext PyTorch on the CrypTen peer benchmark's workloads.

Mirrors ``bench_crypten.py`` of the CrypTen peer folder, so ``benchmarks/compare.py`` can put the
two side by side. The peer folder is found at ``../shared/peers/crypten`` beside the repository
(``Path(__file__).parents[2] / "shared/peers/crypten"``), or wherever ``--peer-dir`` /
``CRYPTEN_PEER_DIR`` say. Its ``workloads.py`` defines everything we run: names, shapes, seeded
inputs (micro-op ``i`` uses ``gen(100 + i)``), model architectures and seeds, training data and
hyper-parameters, plaintext references.

Groups and ownership (as the peer):

* ``micro``: every op of ``workloads.MICRO`` on encrypted operands, operand ``i`` shared by
  party ``i % 2``. ``--level api`` (default) times the torch-style call on ``MPCTensor`` s under
  ``torch.no_grad()`` — like CrypTen's ``spec["api"]`` on its ``CrypTensor`` s; ``--level
  protocol`` times the protocol function on raw shares instead (the difference is the tensor
  layer's overhead).
* ``inference``: ``workloads.INFERENCE``; the seeded plaintext model is encrypted with
  ``crypten_lite.encrypt_module(model, src=0)``, the input shared by party 1, then the
  unmodified ``torch.nn`` model runs on it. Rows ``*_reuse`` are an **extra** without a CrypTen
  counterpart: the same model with ``crypten_lite.nn.reuse_weight_masks`` (the weights' Beaver
  masks are opened once in the untimed set-up, as a server does for its first batch).
  ``lstm_b16`` is an extra too: a 1-layer ``nn.LSTM`` (hidden 128, sequence 32, batch 16),
  also with ``_reuse``.
* ``training``: ``logreg`` (100 SGD steps, batch 100, lr 1.0, ``BCEWithLogitsLoss``) and
  ``mlp_train`` (5 steps on one batch of 64, lr 0.1, ``CrossEntropyLoss`` with one-hot encrypted
  targets), model from party 0, data and labels from party 1, unmodified ``torch.optim.SGD`` on
  the encrypted parameters.
* ``transformer``: ``workloads.TRANSFORMER`` (``bert_layer_s128``, ``gpt2_layer_s64``): the
  peer's ``transformer_layer(ops, spec, x, p, mask)`` itself, with its seeded weights (each of
  ``PARAM_ORDER`` shared by party 0), input (party 1) and public causal mask, run with
  :class:`LiteOps` (the ``ops`` interface on ``MPCTensor`` s: torch's own functions, GELU as
  ``F.gelu``); error against ``transformer_ref``; each party's peak RSS.
* ``large`` (no CrypTen counterpart): ``resnet18_b1``, the BasicBlock ResNet-18 of
  ``tests/mpc/test_numerics_norm.py`` (7x7 stem, max pool, widths 64-512, 10 classes; BatchNorm
  affine parameters as after training) in eval mode on a 1x3x32x32 input, model from party 0,
  input from party 1; ``resnet18_b1_reuse`` the same with ``reuse_weight_masks`` switched on
  before the first pass. Their first and second forward passes are reported apart
  (``first_*`` / ``second_*``: the second is what reusing weight masks speeds up).

``transformer`` and ``large`` start one pair of party processes per workload (a party's peak
RSS, ``peak_rss_mb_rank*``, then belongs to one workload; in the other groups it covers every
workload run before it) and are not in the default ``--groups``.

Timing (the peer's rules): parties are real processes (``crypten_lite.launch``: ZeroMQ over
IPC; ``--link`` picks TCP or a shaped network instead), with our dealer process for
``--provider TTP``. Inputs are shared outside the timed region; every repetition starts after a
barrier; a repetition's time is the max over the parties; the reported time is the median of
``--reps`` repetitions after ``--warmup`` warm-up calls. The first warm-up call is the counted
one: rounds and bytes of one call, and its output is revealed (outside the timed region),
decoded exactly and compared with plaintext torch in float64. Training: one counted step on a
throw-away copy of the model, then every step of a fresh copy timed (barrier before each); the
losses are revealed after the timing and the final weights evaluated in plaintext on the
training data. Plaintext is timed in this process, same thread count, before the parties start.

Communication, per party: ``bytes_rank*`` is CrypTen's convention (sent + received; the number
to compare with the peer's ``bytes``); ``bytes_sent_rank*`` is what a party sends (tensor
payload, to parties and dealer). ``rounds`` counts communication calls between parties
(CrypTen's meaning); ``dealer_round_trips_rank0`` counts party 0's requests to the dealer
process (``--provider TTP``; CrypTen's TTP counts its own party-TTP calls in ``rounds``).

Online and offline, for every party ``r`` (from ``CommStats.parties`` / ``CommStats.dealer``,
which tell the links apart by peer, whatever a message's tag): ``online_rounds_rank{r}``,
``online_bytes_rank{r}`` (sent + received between parties) and ``online_wait_s_rank{r}``;
``offline_messages_rank{r}``, ``offline_bytes_rank{r}`` (sent + received on the dealer link)
and ``offline_wait_s_rank{r}`` (time spent waiting on the dealer). With the dealer process
party 0 makes the offline exchanges while the program runs, and every party waits for them
(each round waits for the slowest party): ``mpc_online_median_s`` is the median over
repetitions of the slowest party's time less the longest time any party waited on the dealer
(an estimate of the time without dealer waits on the critical path). The first call's
counts are the plain fields, the second call's carry a ``second_`` prefix
(``second_call_s``, ``second_online_rounds_rank0``, ...).

Session settings: ``--truncation`` and ``--protocol`` (default: ``CRYPTEN_LITE_TRUNCATION`` /
``CRYPTEN_LITE_PROTOCOL``, else the library's defaults) reach every party over every
``--link``; each party reports the settings it ran with and the JSON's ``env`` records them.
``--protocol replicated`` runs 3 parties and no dealer process (issue 14), each workload in a
launch of its own: one that needs an op the family does not have yet fails alone, listed as
``[failed] name: reason`` (the parties' error) and under ``failed_<group>`` in the JSON, and
the exit status is 1. Where this crypten_lite has no replicated family, the flag exits 2 with
that message.

Adding a workload: put an object with ``group``, ``plain()`` (plaintext timing, parent
process) and ``measure(party, opts)`` (the MPC measurement, inside a party) into
:data:`WORKLOADS`; subclass :class:`Timed` for a call timed like the micro-ops.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
import torch.nn.functional as F

import crypten_lite
from crypten_lite.errors import ConfigurationError, PartyFailedError
from crypten_lite.protocols import activations, comparison, elementary
from crypten_lite.protocols import arithmetic as A
from crypten_lite.protocols.opening import open_shares
from crypten_lite.runtime.comm import CommStats
from crypten_lite.runtime.encoding import decode
from crypten_lite.runtime.party import Party
from crypten_lite.tensor import MPCTensor

HERE = Path(__file__).resolve().parent
DEFAULT_PEER_DIR = Path(__file__).resolve().parents[2] / "shared" / "peers" / "crypten"
PEER_ENV = "CRYPTEN_PEER_DIR"
GROUPS = ("micro", "inference", "training", "transformer", "large")
DEFAULT_GROUPS = ("micro", "inference", "training")
ONE_LAUNCH_PER_WORKLOAD = ("transformer", "large")  # peak RSS per workload
LINKS = ("ipc", "loopback", "lan", "wan")
PROTOCOLS = {"beaver": 2, "replicated": 3}  # family -> parties
BARRIER_TAG = "bench.barrier"
MODEL_OWNER, DATA_OWNER = 0, 1
# The ResNet-18 the tests define (reused, not copied): tests/mpc/test_numerics_norm.py
RESNET_FILE = HERE.parent / "tests" / "mpc" / "test_numerics_norm.py"

# The peer's framework-neutral workload definitions (``workloads.py``), set by load_peer().
W: Any = None


def peer_dir_default() -> Path:
    """``$CRYPTEN_PEER_DIR``, else ``../shared/peers/crypten`` beside the repository."""
    return Path(os.environ.get(PEER_ENV) or DEFAULT_PEER_DIR)


def load_peer(peer_dir: str | os.PathLike[str]) -> ModuleType:
    """Import the peer's ``workloads.py`` (once per process) and return it."""
    global W
    path = Path(peer_dir) / "workloads.py"
    if W is not None and getattr(W, "__file__", None) == str(path):
        return W  # type: ignore[no-any-return]
    if not path.is_file():
        raise FileNotFoundError(
            f"no workloads.py in {peer_dir}: pass --peer-dir DIR or set {PEER_ENV} (the CrypTen "
            "peer folder, by default ../shared/peers/crypten beside the repository)"
        )
    spec = importlib.util.spec_from_file_location("crypten_peer_workloads", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    W = module
    return module


# --------------------------------------------------------------------------- party helpers
Out = MPCTensor | tuple[torch.Tensor, int]  # a secret output, or (share, fractional bits)


@dataclass(frozen=True)
class Options:
    """What every party needs to know about the run (plain values: they cross processes)."""

    reps: int
    warmup: int
    level: str


def _encrypt(t: torch.Tensor, src: int, party: Party) -> MPCTensor:
    """``cryptensor`` of party ``src``'s ``t`` (every party knows the shape: no extra round)."""
    value = t if party.rank == src else None
    return crypten_lite.cryptensor(value, src=src, shape=tuple(t.shape), party=party)  # type: ignore[no-any-return]


def reveal_exact(party: Party, out: Out) -> torch.Tensor:
    """Open a secret and decode it exactly into float64 (``int64 / 2**f``)."""
    share_, frac = (out.share, out.frac_bits) if isinstance(out, MPCTensor) else out
    opened = open_shares([share_.contiguous()], party, tag="bench.reveal")
    assert opened is not None
    return decode(opened[0], frac, torch.float64)


def errors(got: torch.Tensor, ref: torch.Tensor, boolean: bool = False) -> dict[str, Any]:
    """The peer's error fields (our decoder is exact, so both error columns agree)."""
    ref = ref.detach().double()
    err = (got - ref).abs()
    big = ref.abs() >= 1e-2
    rel = (err[big] / ref.abs()[big]).max() if bool(big.any()) else torch.tensor(0.0)
    row: dict[str, Any] = dict(
        max_abs_err=float(err.max()),
        mean_abs_err=float(err.mean()),
        max_rel_err=float(rel),
        max_abs_err_get_plain_text=float(err.max()),
        n_elems=int(ref.numel()),
    )
    if boolean:
        row["mismatches"] = int((got.round() != ref).sum())
    return row


def counts(stats: CommStats) -> dict[str, float]:
    """One call's communication: online (between parties) and offline (the dealer link) apart.

    ``CommStats`` tells the links apart by peer, so material a dealer serves under any tag
    (requests, replies, prefetched batches) lands in the offline columns.
    """
    online, dealer = stats.parties, stats.dealer
    return dict(
        rounds=online.rounds,
        bytes_sent=stats.total.bytes_sent,
        bytes_received=stats.total.bytes_received,
        party_bytes_sent=online.bytes_sent,
        party_bytes_received=online.bytes_received,
        online_wait_s=online.wait_s,
        dealer_bytes_sent=dealer.bytes_sent,
        dealer_bytes_received=dealer.bytes_received,
        dealer_round_trips=dealer.messages_sent,
        dealer_messages=dealer.messages_sent + dealer.messages_received,
        dealer_wait_s=dealer.wait_s,
        comm_time_s=stats.total.wait_s,
    )


def counted(party: Party, fn: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    """Run ``fn`` once after a barrier and return its communication counts and result."""
    party.comm.barrier(BARRIER_TAG)
    party.comm.stats.reset()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    stats = counts(party.comm.stats)
    stats["elapsed_s"] = elapsed
    return stats, out


def timed(party: Party, fn: Callable[[], Any]) -> tuple[float, float, float, Any]:
    """(wall s, CPU s of this process, s waiting on the dealer, result) of ``fn`` after a
    barrier."""
    party.comm.barrier(BARRIER_TAG)
    d0 = party.comm.stats.dealer.wait_s
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, party.comm.stats.dealer.wait_s - d0, out


def peak_rss_mb() -> tuple[float, float]:
    """(current VmRSS, peak VmHWM) of this process in MiB (the peer's ``_rss_mb``)."""
    cur = peak = float("nan")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024.0
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024.0
    return cur, peak


# --------------------------------------------------------------------------- timed workloads
class Timed:
    """A call timed like the peer's micro-ops and inference: set-up, counted call, reps."""

    group = "micro"
    name = ""
    extra = False  # no CrypTen counterpart

    def plain(self, reps: int, warmup: int) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, party: Party, opts: Options) -> Any:
        """Untimed: share the inputs; return the state ``call`` needs."""
        raise NotImplementedError

    def call(self, party: Party, state: Any) -> Out:
        """The timed region."""
        raise NotImplementedError

    def check(self, party: Party, out: Out, state: Any) -> dict[str, Any]:
        """Untimed: reveal ``out`` and compare it with plaintext."""
        raise NotImplementedError

    def measure(self, party: Party, opts: Options) -> dict[str, Any]:
        """Set-up; the first call counted and checked; the second counted (it is a warm-up
        call when ``warmup >= 2``); the remaining warm-ups; ``reps`` timed calls."""
        t0 = time.perf_counter()
        state = self.prepare(party, opts)
        setup_s = time.perf_counter() - t0
        rss_before, _ = peak_rss_mb()
        with torch.no_grad():
            stats, out = counted(party, lambda: self.call(party, state))
            row = self.check(party, out, state)
            del out
            second, _ = counted(party, lambda: self.call(party, state))
            for _ in range(opts.warmup - 2):
                timed(party, lambda: self.call(party, state))
            tc = [timed(party, lambda: self.call(party, state))[:3] for _ in range(opts.reps)]
        row.update(
            times=[t for t, _, _ in tc],
            cpu=[c for _, c, _ in tc],
            dealer_wait=[d for _, _, d in tc],
            comm=stats,
            comm_second=second,
            setup_s=setup_s,
            rss_before_mb=rss_before,
            peak_rss_mb=peak_rss_mb()[1],
        )
        return row


class Micro(Timed):
    """An op of ``workloads.MICRO``: operand ``i`` shared by party ``i % 2``."""

    group = "micro"

    def __init__(
        self,
        name: str,
        proto: Callable[..., tuple[torch.Tensor, int]],
        api: Callable[..., Any] | None = None,
    ) -> None:
        self.name = name
        self.proto = proto  # (party, *shares) -> (share, frac) on raw shares
        self.api = api  # torch-style call on MPCTensors (default: the peer's "api")

    def spec(self) -> tuple[int, dict[str, Any]]:
        for idx, spec in enumerate(W.MICRO):
            if spec["name"] == self.name:
                return idx, spec
        raise KeyError(f"workloads.MICRO has no {self.name!r}")

    def inputs(self) -> tuple[torch.Tensor, ...]:
        idx, spec = self.spec()
        return tuple(spec["make_inputs"](W.gen(100 + idx)))

    @property
    def desc(self) -> str:
        return str(self.spec()[1]["desc"])

    def plain(self, reps: int, warmup: int) -> dict[str, Any]:
        ref, xs = self.spec()[1]["ref"], self.inputs()
        return time_plain(lambda: ref(*xs), reps, warmup)

    def prepare(self, party: Party, opts: Options) -> Any:
        xs = self.inputs()
        enc = [_encrypt(t, i % party.world_size, party) for i, t in enumerate(xs)]
        if opts.level == "protocol":
            return opts.level, [e.share for e in enc], xs
        return opts.level, enc, xs

    def call(self, party: Party, state: Any) -> Out:
        level, operands, _ = state
        if level == "protocol":
            return self.proto(party, *operands)
        for x in operands:
            # New data every call, as in CrypTen: drop by-products stashed on the operand by
            # the previous call (1/x is cached on x for a division's backward).
            x.mark_written()
        api = self.api or self.spec()[1]["api"]
        return api(*operands)  # type: ignore[no-any-return]

    def check(self, party: Party, out: Out, state: Any) -> dict[str, Any]:
        spec = self.spec()[1]
        ref = spec["ref"](*state[2])
        return errors(reveal_exact(party, out), ref, bool(spec.get("boolean", False)))


def _f(party: Party, share_: torch.Tensor) -> tuple[torch.Tensor, int]:
    return share_, party.frac_bits


def _prod(op: str, party: Party, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A fixed-point product of two scale-f sharings: truncated by f bits."""
    return _f(party, A.product(op, x, y, party, shift=party.frac_bits))


MICRO: list[Micro] = [
    Micro("mul_1e6", lambda p, x, y: _prod("mul", p, x, y)),
    Micro("matmul_256", lambda p, x, y: _prod("matmul", p, x, y)),
    Micro("lt_1e5", lambda p, x, y: (comparison.lt(x, y, p), 0)),
    Micro("relu_1e5", lambda p, x: _f(p, comparison.relu(x, p)[0])),
    Micro("exp_1e4", lambda p, x: _f(p, elementary.exp(x, p))),
    Micro("reciprocal_1e4", lambda p, x: _f(p, elementary.reciprocal(x, p))),
    Micro("sqrt_1e4", lambda p, x: _f(p, elementary.sqrt(x, p))),
    Micro("sigmoid_1e4", lambda p, x: _f(p, activations.sigmoid(x, p))),
    Micro("softmax_128x10", lambda p, x: _f(p, activations.softmax(x, p, dim=1))),
    Micro(
        "conv2d_1x1x28x28_6x5x5",
        lambda p, x, w: _prod("conv2d", p, x, w),
        api=lambda x, w: F.conv2d(x, w),  # the peer's api is CrypTen's x.conv2d(w)
    ),
    Micro("mul_1", lambda p, x, y: _prod("mul", p, x, y)),
    Micro("add_1", lambda p, x, y: _f(p, x + y)),
]


class Inference(Timed):
    """A model of ``workloads.INFERENCE``: weights from party 0, input from party 1."""

    group = "inference"

    def __init__(self, name: str, reuse_masks: bool = False) -> None:
        self.base = name
        self.reuse_masks = reuse_masks
        self.extra = reuse_masks
        self.name = f"{name}_reuse" if reuse_masks else name

    def spec(self) -> dict[str, Any]:
        return next(s for s in W.INFERENCE if s["name"] == self.base)

    @property
    def desc(self) -> str:
        extra = ", extra: reuse_weight_masks" if self.reuse_masks else ""
        spec = self.spec()
        return f"{spec['model'].__name__}, batch {spec['batch']}{extra}"

    def model_and_input(self) -> tuple[torch.nn.Module, torch.Tensor]:
        spec = self.spec()
        return W.seeded_model(spec["model"], spec["seed"]), W.inference_input(spec)

    def plain(self, reps: int, warmup: int) -> dict[str, Any]:
        model, x = self.model_and_input()
        return time_plain(lambda: model(x), reps, warmup)

    def prepare(self, party: Party, opts: Options) -> Any:
        model, x = self.model_and_input()
        with torch.no_grad():
            ref = model(x)
        crypten_lite.encrypt_module(model, src=MODEL_OWNER, party=party)
        cx = _encrypt(x, DATA_OWNER, party)
        if self.reuse_masks:
            crypten_lite.nn.reuse_weight_masks(model)
            with torch.no_grad():
                model(cx)  # opens each weight's mask once (what a server's first batch costs)
        return model, cx, ref

    def call(self, party: Party, state: Any) -> Out:
        model, cx, _ = state
        return model(cx)  # type: ignore[no-any-return]

    def check(self, party: Party, out: Out, state: Any) -> dict[str, Any]:
        ref = state[2]
        got = reveal_exact(party, out)
        row = errors(got, ref)
        row["argmax_agreement"] = float((got.argmax(dim=1) == ref.argmax(dim=1)).double().mean())
        return row


class _LSTMOutput(torch.nn.Module):
    """``nn.LSTM`` returning its output sequence only (``(T, B, H)``)."""

    def __init__(self, lstm: torch.nn.LSTM) -> None:
        super().__init__()
        self.lstm = lstm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]  # type: ignore[no-any-return]


class LSTMInference(Inference):
    """Extra (no CrypTen counterpart; the peer's ``workloads.py`` has no LSTM): ``lstm_b16``, a
    1-layer ``nn.LSTM`` (input 128, hidden 128) over a sequence of 32 steps, batch 16; weights
    from party 0 (seeded like the peer's models, ``W.seeded_model``, offset 50), input
    ``N(0, 1)`` from party 1 (``W.gen(60)``). Reports the error of the whole output sequence."""

    SEQ, BATCH, INPUT, HIDDEN = 32, 16, 128, 128

    def __init__(self, reuse_masks: bool = False) -> None:
        self.base = "lstm_b16"
        self.name = "lstm_b16_reuse" if reuse_masks else "lstm_b16"
        self.reuse_masks = reuse_masks
        self.extra = True

    @property
    def desc(self) -> str:
        extra = ", reuse_weight_masks" if self.reuse_masks else ""
        return f"nn.LSTM({self.INPUT}, {self.HIDDEN}), seq {self.SEQ}, batch {self.BATCH}{extra}"

    def model_and_input(self) -> tuple[torch.nn.Module, torch.Tensor]:
        model = W.seeded_model(lambda: _LSTMOutput(torch.nn.LSTM(self.INPUT, self.HIDDEN)), 50)
        x = torch.randn(self.SEQ, self.BATCH, self.INPUT, generator=W.gen(60))
        return model, x

    def check(self, party: Party, out: Out, state: Any) -> dict[str, Any]:
        return errors(reveal_exact(party, out), state[2])


# --------------------------------------------------------------------------- transformer
class LiteOps:
    """``workloads.transformer_layer``'s ``ops`` interface on ``MPCTensor`` s.

    ``MPCTensor`` is a torch tensor, so each op is the torch call on it, exactly as the peer's
    ``TorchOps`` reference writes it, dispatched to crypten_lite's protocols: ``torch.matmul``
    is a Beaver matrix product (batched for the heads), the reshapes and transposes are local,
    ``softmax``, ``rsqrt`` and the two GELUs are the library's approximations (GELU as
    ``F.gelu`` with ``approximate="none"`` / ``"tanh"``: its one-shot protocol, as CrypTen's
    runner uses CrypTen's ``erf`` / ``tanh``). Plain tensors (the causal mask, the scale) are
    public operands.
    """

    matmul = staticmethod(torch.matmul)

    @staticmethod
    def split_heads(t: torch.Tensor, h: int) -> torch.Tensor:
        b, s, hd = t.shape
        return t.reshape(b, s, h, hd // h).permute(0, 2, 1, 3)

    @staticmethod
    def merge_heads(t: torch.Tensor) -> torch.Tensor:
        b, h, s, d = t.shape
        return t.permute(0, 2, 1, 3).reshape(b, s, h * d)

    @staticmethod
    def transpose_last2(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(-2, -1)

    @staticmethod
    def mean_last(t: torch.Tensor) -> torch.Tensor:
        return t.mean(-1, keepdim=True)

    @staticmethod
    def softmax_last(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(t, dim=-1)

    rsqrt = staticmethod(torch.rsqrt)

    @staticmethod
    def gelu_erf(t: torch.Tensor) -> torch.Tensor:
        return F.gelu(t)

    @staticmethod
    def gelu_tanh(t: torch.Tensor) -> torch.Tensor:
        return F.gelu(t, approximate="tanh")


def encrypt_transformer(
    party: Party, spec: dict[str, Any]
) -> tuple[MPCTensor, dict[str, MPCTensor], torch.Tensor | None, torch.Tensor]:
    """The peer's seeded weights (each shared by party 0), input (party 1), public mask, and
    the plaintext reference: ``(x, params, mask, ref)``."""
    p, x = W.transformer_params(spec), W.transformer_input(spec)
    ref = W.transformer_ref(spec, x, p)
    cp = {n: _encrypt(p[n], MODEL_OWNER, party) for n in W.PARAM_ORDER}
    cx = _encrypt(x, DATA_OWNER, party)
    mask = W.causal_mask(spec["seq"]) if spec["causal"] else None
    return cx, cp, mask, ref


class Transformer(Timed):
    """A layer of ``workloads.TRANSFORMER``: ``transformer_layer(LiteOps, ...)``."""

    group = "transformer"

    def __init__(self, name: str) -> None:
        self.name = name

    def spec(self) -> dict[str, Any]:
        return next(s for s in W.TRANSFORMER if s["name"] == self.name)

    @property
    def desc(self) -> str:
        s = self.spec()
        return (
            f"{s['arch']} layer ({'pre' if s['pre_ln'] else 'post'}-LN, {s['gelu']} GELU"
            f"{', causal' if s['causal'] else ''}), seq {s['seq']}, hidden {s['hidden']}"
        )

    def plain(self, reps: int, warmup: int) -> dict[str, Any]:
        spec = self.spec()
        p, x = W.transformer_params(spec), W.transformer_input(spec)
        return time_plain(lambda: W.transformer_ref(spec, x, p), reps, warmup)

    def prepare(self, party: Party, opts: Options) -> Any:
        return (self.spec(), *encrypt_transformer(party, self.spec()))

    def call(self, party: Party, state: Any) -> Out:
        spec, cx, cp, mask, _ = state
        return W.transformer_layer(LiteOps, spec, cx, cp, mask)  # type: ignore[no-any-return]

    def check(self, party: Party, out: Out, state: Any) -> dict[str, Any]:
        ref = state[-1].double()
        got = reveal_exact(party, out)
        row = errors(got, ref)
        row["rel_l2_err"] = float((got - ref).norm() / ref.norm())
        return row


# --------------------------------------------------------------------------- ResNet-18
def resnet18() -> torch.nn.Module:
    """ResNet-18 (BasicBlocks 2-2-2-2, width 64, 10 classes) of ``RESNET_FILE``, seeded like
    the peer's models (``W.seeded_model``, offset 70), eval mode."""
    spec = importlib.util.spec_from_file_location("crypten_lite_tests_resnet", RESNET_FILE)
    if spec is None or spec.loader is None or not RESNET_FILE.is_file():
        raise FileNotFoundError(f"resnet18_b1 needs the ResNet class of {RESNET_FILE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return W.seeded_model(lambda: module.ResNet((2, 2, 2, 2), 64), 70)  # type: ignore[no-any-return]


class ResNet18(Inference):
    """``resnet18_b1``: :func:`resnet18` on a ``N(0, 1)`` 1x3x32x32 input (``W.gen(71)``); with
    ``reuse_masks``, ``reuse_weight_masks`` is on before the first pass (which then opens the
    weights' masks: the second pass shows what reuse saves)."""

    group = "large"

    def __init__(self, reuse_masks: bool = False) -> None:
        self.base = "resnet18_b1"
        self.reuse_masks = reuse_masks
        self.extra = True
        self.name = f"{self.base}_reuse" if reuse_masks else self.base

    @property
    def desc(self) -> str:
        extra = ", reuse_weight_masks" if self.reuse_masks else ""
        return f"ResNet-18 (BasicBlock, 7x7 stem), eval, 1x3x32x32{extra}"

    def model_and_input(self) -> tuple[torch.nn.Module, torch.Tensor]:
        return resnet18(), torch.randn(1, 3, 32, 32, generator=W.gen(71))

    def prepare(self, party: Party, opts: Options) -> Any:
        model, x = self.model_and_input()
        with torch.no_grad():
            ref = model(x)
        crypten_lite.encrypt_module(model, src=MODEL_OWNER, party=party)
        if self.reuse_masks:
            crypten_lite.nn.reuse_weight_masks(model)
        return model, _encrypt(x, DATA_OWNER, party), ref


# --------------------------------------------------------------------------- training
class Training:
    """SGD training of ``workloads.LOGREG`` or ``MLP_TRAIN`` with unmodified torch code."""

    group = "training"
    extra = False

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def desc(self) -> str:
        if self.name == "logreg":
            c = W.LOGREG
            return (
                f"logistic regression {c['n']}x{c['d']}, batch {c['batch']}, "
                f"{c['epochs']} epochs, lr {c['lr']}"
            )
        c = W.MLP_TRAIN
        return f"MLP 784-128-128-10, batch {c['batch']}, {c['steps']} steps, lr {c['lr']}"

    def lr(self) -> float:
        return float((W.LOGREG if self.name == "logreg" else W.MLP_TRAIN)["lr"])

    def model(self) -> torch.nn.Module:
        return W.logreg_model() if self.name == "logreg" else W.mlp_train_model()  # type: ignore[no-any-return]

    def loss_fn(self) -> torch.nn.Module:
        if self.name == "logreg":
            return torch.nn.BCEWithLogitsLoss()
        return torch.nn.CrossEntropyLoss()

    def plain_batches(self) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], Any]:
        """Plaintext batches (targets as torch's loss takes them) and the full data."""
        if self.name == "logreg":
            x, y = W.logreg_data()
            b, n = W.LOGREG["batch"], W.LOGREG["n"]
            batches = [
                (x[i : i + b], y[i : i + b])
                for _ in range(W.LOGREG["epochs"])
                for i in range(0, n, b)
            ]
            return batches, (x, y)
        x, labels, _ = W.mlp_train_data()
        return [(x, labels)] * W.MLP_TRAIN["steps"], (x, labels)

    def plain(self, reps: int, warmup: int) -> dict[str, Any]:
        """The peer's plaintext run: warm-up on a few batches, then every step timed."""
        batches, data = self.plain_batches()
        _plain_train(self.model(), batches[: 3 if self.name == "logreg" else 2], self)
        times, losses, model = _plain_train(self.model(), batches, self)
        return dict(step_times=times, losses=losses, model=model, data=data)

    def encrypted_batches(self, party: Party) -> list[tuple[Any, Any]]:
        """Data and labels shared by party 1 (untimed); batches are views, as in the peer."""
        if self.name == "logreg":
            x, y = W.logreg_data()
            cx, cy = _encrypt(x, DATA_OWNER, party), _encrypt(y, DATA_OWNER, party)
            b, n = W.LOGREG["batch"], W.LOGREG["n"]
            return [
                (cx[i : i + b], cy[i : i + b])
                for _ in range(W.LOGREG["epochs"])
                for i in range(0, n, b)
            ]
        x, _, onehot = W.mlp_train_data()
        cx, cy = _encrypt(x, DATA_OWNER, party), _encrypt(onehot, DATA_OWNER, party)
        return [(cx, cy)] * W.MLP_TRAIN["steps"]

    def measure(self, party: Party, opts: Options) -> dict[str, Any]:
        batches = self.encrypted_batches(party)
        loss_fn = self.loss_fn()

        def trainer() -> tuple[torch.nn.Module, Callable[[Any, Any], Any]]:
            model = self.model()
            crypten_lite.encrypt_module(model, src=MODEL_OWNER, party=party)
            opt = torch.optim.SGD(model.parameters(), lr=self.lr())

            def step(xb: Any, yb: Any) -> Any:
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                return loss.detach()

            return model, step

        _, step = trainer()  # a throw-away copy: the counted warm-up step
        stats, _ = counted(party, lambda: step(*batches[0]))
        model, step = trainer()
        times, cpus, losses = [], [], []
        for xb, yb in batches:
            t, c, _, loss = timed(party, lambda: step(xb, yb))  # noqa: B023
            times.append(t)
            cpus.append(c)
            losses.append(loss)
        losses_pub = [float(reveal_exact(party, loss)) for loss in losses]
        params = {
            name: reveal_exact(party, cast(MPCTensor, p.detach())).float()
            for name, p in model.named_parameters()
        }
        return dict(
            step_times=times, step_cpu=cpus, comm_per_step=stats, losses=losses_pub, params=params
        )


def _plain_train(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], wl: Training
) -> tuple[list[float], list[float], torch.nn.Module]:
    opt = torch.optim.SGD(model.parameters(), lr=wl.lr())
    loss_fn = wl.loss_fn()
    times, losses = [], []
    for xb, yb in batches:
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return times, losses, model


# --------------------------------------------------------------------------- the registry
WORKLOADS: dict[str, Any] = {
    **{m.name: m for m in MICRO},
    **{n: Inference(n) for n in ("mlp_b1", "mlp_b64", "lenet_b1", "lenet_b64")},
    **{f"{n}_reuse": Inference(n, reuse_masks=True) for n in ("mlp_b64", "lenet_b64")},
    "lstm_b16": LSTMInference(),
    "lstm_b16_reuse": LSTMInference(reuse_masks=True),
    "logreg": Training("logreg"),
    "mlp_train": Training("mlp_train"),
    "bert_layer_s128": Transformer("bert_layer_s128"),
    "gpt2_layer_s64": Transformer("gpt2_layer_s64"),
    "resnet18_b1": ResNet18(),
    "resnet18_b1_reuse": ResNet18(reuse_masks=True),
}


def party_main(names: list[str], reps: int, warmup: int, level: str, peer_dir: str) -> Any:
    """Run the named workloads on this party (inside ``crypten_lite.launch``); the results by
    name, and under ``"__session__"`` the settings this party ran with."""
    load_peer(peer_dir)
    party = crypten_lite.get_party()
    opts = Options(reps=reps, warmup=warmup, level=level)
    out: dict[str, Any] = {name: WORKLOADS[name].measure(party, opts) for name in names}
    cfg = party.config
    out[SESSION_KEY] = dict(
        truncation=cfg.truncation,
        protocol=cfg.protocol,
        dealer=cfg.dealer,
        world_size=party.world_size,
    )
    return out


SESSION_KEY = "__session__"


# --------------------------------------------------------------------------- plaintext
def time_plain(
    fn: Callable[[], Any], reps: int, warmup: int, min_rep_s: float = 0.02
) -> dict[str, Any]:
    """Median seconds per call; calls shorter than ``min_rep_s`` are looped (the peer's rule)."""
    with torch.no_grad():
        for _ in range(max(1, warmup)):
            fn()
        t0 = time.perf_counter()
        fn()
        inner = max(1, int(min_rep_s / max(time.perf_counter() - t0, 1e-7)))
        times, cpus = [], []
        for _ in range(reps):
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) / inner)
            cpus.append((time.process_time() - c0) / inner)
    return dict(
        plain_median_s=statistics.median(times),
        plain_cpu_median_s=statistics.median(cpus),
        plain_inner_loops=inner,
    )


# --------------------------------------------------------------------------- machine load
_HZ = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / _HZ


def _own_cpu_s() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _busy_fraction(interval: float) -> float:
    b0, t0 = _machine_busy_s(), time.perf_counter()
    time.sleep(interval)
    return (_machine_busy_s() - b0) / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


class LoadMonitor:
    """CPU-seconds used by other processes while a group runs (the machine may be shared)."""

    def __init__(self, group: str, wait_s: float) -> None:
        self.group, self.wait_s = group, wait_s

    def __enter__(self) -> LoadMonitor:
        start = time.perf_counter()
        busy = _busy_fraction(0.5)
        while busy >= 0.10 and time.perf_counter() - start < self.wait_s:
            time.sleep(2.0)
            busy = _busy_fraction(1.0)
        self.busy_before = busy
        if busy > 0.10:
            print(
                f"[warning] CPUs {busy:.0%} busy before the {self.group} group: other processes "
                "share the machine, wall times will be inflated",
                flush=True,
            )
        self.b0, self.o0, self.t0 = _machine_busy_s(), _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        foreign = max(0.0, (_machine_busy_s() - self.b0) - (_own_cpu_s() - self.o0))
        self.info = dict(
            busy_fraction_before=round(self.busy_before, 3),
            group_wall_s=round(wall, 2),
            foreign_cpu_s=round(foreign, 2),
            foreign_cores_avg=round(foreign / wall, 3) if wall > 0 else 0.0,
        )

    def note(self) -> str:
        i = self.info
        return (
            f"[load] CPUs {i['busy_fraction_before']:.0%} busy before; other processes used "
            f"{i['foreign_cpu_s']:.1f} CPU-s during the {i['group_wall_s']:.1f} s group "
            f"(= {i['foreign_cores_avg']:.2f} cores on average)"
        )


# --------------------------------------------------------------------------- merging
def _comm_fields(comms: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    """Our communication fields, per party (the peer's names where it has them), with the
    online (party link) and offline (dealer link) split."""
    c0 = comms[0]
    out: dict[str, Any] = {
        f"party_bytes_sent{suffix}_rank0": c0["party_bytes_sent"],
        f"dealer_bytes{suffix}_rank0": c0["dealer_bytes_sent"] + c0["dealer_bytes_received"],
        f"dealer_round_trips{suffix}_rank0": c0["dealer_round_trips"],
        f"comm_time_s{suffix}_rank0": c0["comm_time_s"],
    }
    for r, c in enumerate(comms):
        out.update(
            {
                f"bytes_sent{suffix}_rank{r}": c["bytes_sent"],
                f"online_rounds{suffix}_rank{r}": c["rounds"],
                f"online_bytes{suffix}_rank{r}": c["party_bytes_sent"] + c["party_bytes_received"],
                f"online_wait_s{suffix}_rank{r}": c["online_wait_s"],
                f"offline_messages{suffix}_rank{r}": c["dealer_messages"],
                f"offline_bytes{suffix}_rank{r}": c["dealer_bytes_sent"]
                + c["dealer_bytes_received"],
                f"offline_wait_s{suffix}_rank{r}": c["dealer_wait_s"],
            }
        )
    return out


PER_PARTY_KEYS = ("times", "cpu", "dealer_wait", "comm", "comm_second", "rss_before_mb")


def merge_timed(
    per_rank: list[dict[str, Any]], plain: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per-rep max over parties, then the median; comm of one call; the peer's row layout."""
    rows = {}
    for name, r0 in per_rank[0].items():
        parts = [r[name] for r in per_rank]
        reps = [max(ts) for ts in zip(*(p["times"] for p in parts), strict=True)]
        # Every round waits for the slowest party, so party 0's dealer waits delay the others
        # too: the online estimate takes the longest dealer wait off the slowest party's time.
        waits = [max(ds) for ds in zip(*(p["dealer_wait"] for p in parts), strict=True)]
        online = [max(0.0, t - d) for t, d in zip(reps, waits, strict=True)]
        cpu = [sum(cs) for cs in zip(*(p["cpu"] for p in parts), strict=True)]
        comms, seconds = [p["comm"] for p in parts], [p["comm_second"] for p in parts]
        row = {k: v for k, v in r0.items() if k not in (*PER_PARTY_KEYS, "peak_rss_mb")}
        row.update(
            mpc_median_s=statistics.median(reps),
            mpc_min_s=min(reps),
            mpc_max_s=max(reps),
            mpc_reps_s=reps,
            mpc_online_median_s=statistics.median(online),
            dealer_wait_median_s=statistics.median(waits),
            mpc_cpu_median_s=statistics.median(cpu),
            rounds=comms[0]["rounds"],
            **{
                f"bytes_rank{r}": c["bytes_sent"] + c["bytes_received"] for r, c in enumerate(comms)
            },
            **{f"rounds_rank{r}": c["rounds"] for r, c in enumerate(comms) if r},
            **_comm_fields(comms),
            first_call_s=max(c["elapsed_s"] for c in comms),
            first_call_s_rank0=comms[0]["elapsed_s"],
            second_call_s=max(c["elapsed_s"] for c in seconds),
            second_rounds=seconds[0]["rounds"],
            **_comm_fields(seconds, "_second"),
            **{f"peak_rss_mb_rank{r}": p["peak_rss_mb"] for r, p in enumerate(parts)},
            **{f"rss_before_mb_rank{r}": p["rss_before_mb"] for r, p in enumerate(parts)},
            **plain[name],
        )
        row["ratio"] = row["mpc_median_s"] / row["plain_median_s"]
        wl = WORKLOADS[name]
        if wl.extra:
            row.update(extra=True, base=wl.base)
        rows[name] = row
    return rows


def _evaluate(name: str, model: torch.nn.Module, data: Any) -> tuple[float, float]:
    """Full-data loss and accuracy of ``model`` in plaintext (the peer's evaluation)."""
    x, y = data
    out = model(x)
    if name == "logreg":
        loss = torch.nn.BCEWithLogitsLoss()(out, y).item()
        acc = ((out > 0).float() == y).float().mean().item()
    else:
        loss = torch.nn.CrossEntropyLoss()(out, y).item()
        acc = (out.argmax(1) == y).float().mean().item()
    return loss, acc


def merge_training(
    per_rank: list[dict[str, Any]], plain: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The peer's training row: step times, losses vs plaintext, final weights evaluated."""
    rows = {}
    for name, r0 in per_rank[0].items():
        r1 = per_rank[1][name]
        steps = [max(t) for t in zip(*(r[name]["step_times"] for r in per_rank), strict=True)]
        cpu = [sum(c) for c in zip(*(r[name]["step_cpu"] for r in per_rank), strict=True)]
        p = plain[name]
        model = p["model"]
        mpc_model = copy.deepcopy(model)
        with torch.no_grad():
            for pname, param in mpc_model.named_parameters():
                param.copy_(r0["params"][pname])
            full_plain, acc_plain = _evaluate(name, model, p["data"])
            full_mpc, acc_mpc = _evaluate(name, mpc_model, p["data"])
            wdiff = max(
                (a - b).abs().max().item()
                for a, b in zip(model.parameters(), mpc_model.parameters(), strict=True)
            )
        c0, c1 = r0["comm_per_step"], r1["comm_per_step"]
        comms = [r[name]["comm_per_step"] for r in per_rank]
        rows[name] = dict(
            steps=len(steps),
            mpc_step_median_s=statistics.median(steps),
            mpc_step_first_s=steps[0],
            mpc_total_s=sum(steps),
            mpc_step_times_s=steps,
            mpc_step_cpu_median_s=statistics.median(cpu),
            plain_step_median_s=statistics.median(p["step_times"]),
            plain_total_s=sum(p["step_times"]),
            ratio=statistics.median(steps) / statistics.median(p["step_times"]),
            rounds_per_step=c0["rounds"],
            bytes_per_step_rank0=c0["bytes_sent"] + c0["bytes_received"],
            bytes_per_step_rank1=c1["bytes_sent"] + c1["bytes_received"],
            **_comm_fields(comms, "_per_step"),
            mpc_losses=r0["losses"],
            plain_losses=p["losses"],
            final_step_loss_mpc=r0["losses"][-1],
            final_step_loss_plain=p["losses"][-1],
            final_full_loss_mpc=full_mpc,
            final_full_loss_plain=full_plain,
            train_acc_mpc=acc_mpc,
            train_acc_plain=acc_plain,
            max_abs_param_diff=wdiff,
            max_abs_loss_diff=max(
                abs(a - b) for a, b in zip(r0["losses"], p["losses"], strict=True)
            ),
        )
    return rows


# --------------------------------------------------------------------------- printing
def fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def fmt_b(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000.0
    return str(n)


def print_timed(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n== {title} ==")
    hdr = (
        f"{'workload':<24} {'mpc wall':>10} {'mpc cpu':>10} {'plain':>10} {'ratio':>8} "
        f"{'rounds':>6} {'sent/party':>11} {'CrypTen B':>11} {'max abs err':>11} "
        f"{'max rel err':>11}  notes"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        notes = []
        if "mismatches" in r:
            notes.append(f"mismatches={r['mismatches']}/{r['n_elems']}")
        if "argmax_agreement" in r:
            notes.append(f"argmax agree={r['argmax_agreement']:.3f}")
        if r["dealer_round_trips_rank0"]:
            notes.append(f"+{r['dealer_round_trips_rank0']} dealer trips")
        if r.get("extra"):
            notes.append("extra")
        print(
            f"{name:<24} {fmt_s(r['mpc_median_s']):>10} {fmt_s(r['mpc_cpu_median_s']):>10} "
            f"{fmt_s(r['plain_median_s']):>10} {r['ratio']:>7.0f}x {r['rounds']:>6} "
            f"{fmt_b(r['bytes_sent_rank0']):>11} {fmt_b(r['bytes_rank0']):>11} "
            f"{r['max_abs_err']:>11.2e} {r['max_rel_err']:>11.2e}  {'; '.join(notes)}"
        )


def print_split(rows: dict[str, dict[str, Any]], world_size: int) -> None:
    """Online (between parties) and offline (dealer link) cost of the first and second call,
    for every party."""
    print("\nonline (parties) vs offline (dealer link), per party; first call | second call:")
    hdr = (
        f"{'workload':<24} {'rank':>4} {'online rnds':>11} {'online B':>10} {'wait':>9} "
        f"{'dealer msgs':>11} {'dealer B':>10} {'dealer wait':>11} | {'rnds':>5} "
        f"{'online B':>10} {'dealer msgs':>11} {'dealer B':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        for k in range(world_size):
            print(
                f"{name if k == 0 else '':<24} {k:>4} {r[f'online_rounds_rank{k}']:>11} "
                f"{fmt_b(r[f'online_bytes_rank{k}']):>10} "
                f"{fmt_s(r[f'online_wait_s_rank{k}']):>9} "
                f"{r[f'offline_messages_rank{k}']:>11} {fmt_b(r[f'offline_bytes_rank{k}']):>10} "
                f"{fmt_s(r[f'offline_wait_s_rank{k}']):>11} | "
                f"{r[f'online_rounds_second_rank{k}']:>5} "
                f"{fmt_b(r[f'online_bytes_second_rank{k}']):>10} "
                f"{r[f'offline_messages_second_rank{k}']:>11} "
                f"{fmt_b(r[f'offline_bytes_second_rank{k}']):>10}"
            )
        print(
            f"{'':<24} time: first call {fmt_s(r['first_call_s'])}, second "
            f"{fmt_s(r['second_call_s'])}, median {fmt_s(r['mpc_median_s'])} (online "
            f"{fmt_s(r['mpc_online_median_s'])}); peak RSS "
            + " / ".join(f"{r[f'peak_rss_mb_rank{k}']:.0f}" for k in range(world_size))
            + " MiB"
        )


def print_training(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n== {title} ==")
    for name, r in rows.items():
        print(
            f"{name}: {r['steps']} steps; step median MPC {fmt_s(r['mpc_step_median_s'])} "
            f"(cpu {fmt_s(r['mpc_step_cpu_median_s'])}, first {fmt_s(r['mpc_step_first_s'])}, "
            f"total {r['mpc_total_s']:.2f} s) vs plain {fmt_s(r['plain_step_median_s'])} -> "
            f"{r['ratio']:.0f}x; {r['rounds_per_step']} rounds, "
            f"{fmt_b(r['bytes_per_step_rank0'])}/party per step (CrypTen's count)"
        )
        print(
            f"    final step loss MPC {r['final_step_loss_mpc']:.4f} vs plain "
            f"{r['final_step_loss_plain']:.4f} (max |diff| over steps "
            f"{r['max_abs_loss_diff']:.1e}); full-data loss MPC {r['final_full_loss_mpc']:.4f} "
            f"vs plain {r['final_full_loss_plain']:.4f}; train acc MPC {r['train_acc_mpc']:.3f} "
            f"vs plain {r['train_acc_plain']:.3f}; max |param diff| {r['max_abs_param_diff']:.2e}"
        )


# --------------------------------------------------------------------------- driver
def session_config(args: argparse.Namespace) -> crypten_lite.Config:
    """The parties' settings: the ``CRYPTEN_LITE_*`` environment with ``--truncation`` and
    ``--protocol`` applied (``launch`` sets ``dealer`` and ``transport`` itself)."""
    overrides = dict(truncation=args.truncation, protocol=args.protocol)
    return crypten_lite.config_from_env(**{k: v for k, v in overrides.items() if v is not None})


def run_parties(names: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start the parties over ``args.link`` and run ``party_main`` on each."""
    call_args = (names, args.reps, args.warmup, args.level, str(args.peer_dir))
    dealer = args.provider == "TTP"
    config = session_config(args)
    if args.link == "ipc":
        return crypten_lite.launch(
            party_main,
            args.world_size,
            args=call_args,
            dealer=dealer,
            config=config,
            threads=args.threads,
            timeout_s=args.timeout,
            quiet=True,
        )
    from netlink import launch_shaped

    return launch_shaped(
        party_main,
        args.world_size,
        args=call_args,
        link=args.link,
        dealer=dealer,
        threads=args.threads,
        timeout_s=args.timeout,
        config=config,
    )


def failure_reason(exc: BaseException) -> str:
    """The last error line of a failed run's report (the parties' tracebacks end with it)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if "Error" in ln or "error" in ln]
    return lines[-1] if lines else f"{type(exc).__name__}: {exc}"


def run_group(
    group: str, names: list[str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each party's results for ``names`` and the workloads that failed, with the reason.

    One launch, or one per workload for the groups in ``ONE_LAUNCH_PER_WORKLOAD`` and under
    the replicated family (whose coverage is still growing: an op it lacks fails only its
    workload). Checks that every party ran with the requested settings.
    """
    per_workload = group in ONE_LAUNCH_PER_WORKLOAD or args.world_size != 2
    batches = [[n] for n in names] if per_workload else [names]
    per_rank: list[dict[str, Any]] = [{} for _ in range(args.world_size)]
    failed: dict[str, str] = {}
    want = session_config(args)
    for batch in batches:
        try:
            results = run_parties(batch, args)
        except (PartyFailedError, RuntimeError) as exc:
            failed.update(dict.fromkeys(batch, failure_reason(exc)))
            continue
        for rank, result in enumerate(results):
            ran = result.pop(SESSION_KEY)
            if (ran["truncation"], ran["protocol"]) != (want.truncation, want.protocol):
                raise RuntimeError(
                    f"party {rank} ran with truncation {ran['truncation']!r}, protocol "
                    f"{ran['protocol']!r}; asked for {want.truncation!r}, {want.protocol!r}"
                )
            per_rank[rank].update(result)
    return per_rank, failed


def protocol_problem(protocol: str, provider: str) -> str | None:
    """Why ``--protocol`` cannot run here, or ``None``."""
    if protocol != "replicated":
        return None
    if importlib.util.find_spec("crypten_lite.protocols.replicated") is None:
        return (
            "this crypten_lite has no replicated protocol family yet (issue 14: "
            "crypten_lite.protocols.replicated is missing); run --protocol beaver"
        )
    if provider == "TTP":
        return (
            "the replicated family (3 parties, honest majority) has no dealer: drop --provider TTP"
        )
    return None


def link_problem(link: str) -> str | None:
    """Why ``--link`` cannot be used here, or ``None``."""
    if link == "ipc":
        return None
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    try:
        from netlink import link_unavailable
    except ImportError as exc:  # tests/netns lives in the repository checkout
        return f"benchmarks/netlink.py cannot be imported: {exc}"
    return link_unavailable(link)


def source_info() -> dict[str, str | None]:
    """Which crypten_lite is measured: its folder and ``git describe`` of its checkout."""
    where = Path(crypten_lite.__file__).resolve().parents[1]
    try:
        git = subprocess.run(
            ["git", "-C", str(where), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        git = None
    return dict(crypten_lite_path=str(where), git=git)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--groups",
        default=",".join(DEFAULT_GROUPS),
        help=f"comma list of {', '.join(GROUPS)} (default: {','.join(DEFAULT_GROUPS)})",
    )
    ap.add_argument("--only", default="", help="comma list of workload names (default: all)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up calls, >= 1 (first counted)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per party (default 1)")
    ap.add_argument(
        "--provider",
        default="TFP",
        choices=["TFP", "TTP"],
        help="TFP: party 0 deals (insecure, like CrypTen's default); TTP: our dealer process",
    )
    ap.add_argument(
        "--link",
        default="ipc",
        choices=LINKS,
        help="ipc: ZeroMQ over IPC (default); loopback: TCP on this host; lan/wan: parties in "
        "shaped network namespaces (benchmarks/netlink.py; needs root)",
    )
    ap.add_argument(
        "--truncation",
        choices=["auto", "dealer", "local"],
        default=None,
        help="the parties' CRYPTEN_LITE_TRUNCATION (default: this environment's, else auto)",
    )
    ap.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default=None,
        help="the protocol family, CRYPTEN_LITE_PROTOCOL (default: this environment's, else "
        "beaver: 2 parties; replicated: 3 parties, no dealer)",
    )
    ap.add_argument(
        "--level",
        default="api",
        choices=["api", "protocol"],
        help="micro-ops through the MPCTensor API (default, like CrypTen) or the protocol "
        "functions on raw shares",
    )
    ap.add_argument(
        "--peer-dir",
        type=Path,
        default=None,
        help=f"the CrypTen peer folder (default: ${PEER_ENV}, else {DEFAULT_PEER_DIR})",
    )
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per-group limit in seconds")
    ap.add_argument("--json", default="", help="write all results to this JSON file")
    args = ap.parse_args(argv)
    args.warmup = max(1, args.warmup)
    try:
        config = session_config(args)
    except ConfigurationError as exc:
        ap.error(str(exc))
    args.world_size = PROTOCOLS[config.protocol]
    args.peer_dir = (args.peer_dir or peer_dir_default()).resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        load_peer(args.peer_dir)
    except FileNotFoundError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 2
    problem = link_problem(args.link)
    if problem is not None:
        print(f"bench.py: --link {args.link} is not available here: {problem}", file=sys.stderr)
        return 2
    config = session_config(args)
    problem = protocol_problem(config.protocol, args.provider)
    if problem is not None:
        print(f"bench.py: --protocol {config.protocol}: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    groups = [g for g in args.groups.split(",") if g]
    bad_groups = set(groups) - set(GROUPS)
    only = set(filter(None, args.only.split(",")))
    unknown = only - set(WORKLOADS)
    if bad_groups or unknown:
        print(
            f"bench.py: unknown groups {sorted(bad_groups)} / workloads {sorted(unknown)}; "
            f"known: {', '.join(GROUPS)} / {', '.join(WORKLOADS)}",
            file=sys.stderr,
        )
        return 2

    env = dict(
        crypten_lite=crypten_lite.__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        ncpu=os.cpu_count(),
        threads=args.threads,
        provider=args.provider if config.protocol == "beaver" else "none",
        precision_bits=config.frac_bits,
        truncation=config.truncation,
        protocol=config.protocol,
        world_size=args.world_size,
        reps=args.reps,
        warmup=args.warmup,
        transport=args.link,
        level=args.level,
        peer_dir=str(args.peer_dir),
        **source_info(),
        loadavg_start=os.getloadavg(),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    print(
        f"crypten_lite {env['crypten_lite']} | torch {env['torch']} | {env['ncpu']} cpus | "
        f"provider {env['provider']} | protocol {config.protocol} | truncation "
        f"{config.truncation} | link {args.link} | level {args.level} | {args.world_size} "
        f"parties | threads/party {args.threads} | reps {args.reps} warmup {args.warmup} | "
        f"loadavg {tuple(round(x, 2) for x in env['loadavg_start'])}"
    )
    results: dict[str, Any] = dict(env=env)
    for group in groups:
        names = [n for n, w in WORKLOADS.items() if w.group == group and (not only or n in only)]
        if not names:
            continue
        with LoadMonitor(group, args.wait_idle) as mon:
            plain = {n: WORKLOADS[n].plain(args.reps, args.warmup) for n in names}
            t0 = time.perf_counter()
            per_rank, failed = run_group(group, names, args)
            wall = time.perf_counter() - t0
        for name, reason in failed.items():
            print(f"[failed] {name}: {reason}", file=sys.stderr)
        if failed:
            results[f"failed_{group}"] = failed
        title = f"{group} (MPC part {wall:.1f} s)"
        if group == "training":
            rows = merge_training(per_rank, plain)
            print_training(title, rows)
        else:
            rows = merge_timed(per_rank, plain)
            print_timed(title, rows)
            print_split(rows, args.world_size)
        print(mon.note())
        results[group] = rows
        results[f"load_{group}"] = mon.info
    env["loadavg_end"] = os.getloadavg()
    print(f"\nloadavg at end: {tuple(round(x, 2) for x in env['loadavg_end'])}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return 1 if any(k.startswith("failed_") for k in results) else 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message=r"launch\(dealer=False\)")
    sys.exit(main())
