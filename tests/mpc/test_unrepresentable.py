"""A value that cannot be represented raises EncodingError naming the op, on every party, and
the session stays in step afterwards (nobody is left waiting), for 2 and 3 parties."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crypten_lite as cl
from crypten_lite.errors import EncodingError, PartyFailedError
from crypten_lite.runtime.encoding import SaturationWarning

X = torch.tensor([1.0, -2.0, 3.0])

# (the op the message must name, the call): huge public constants and operands.
CASES: list[tuple[str, Callable[[Any], Any]]] = [
    ("aten.mul.Tensor", lambda x: x * 1e20),
    ("aten.mul.Tensor", lambda x: x * torch.tensor([1.0, 1e20, 2.0])),
    ("aten.div.Tensor", lambda x: x / 1e-20),
    ("aten.constant_pad_nd.default", lambda x: F.pad(x, (1, 1), value=1e18)),
    ("aten.dot.default", lambda x: x @ torch.full((3,), 1e15)),
    ("aten.mul.Tensor", lambda x: x * float("nan")),
]


def test_masking_operands_out_of_range_saturate_with_a_warning_on_every_party(
    run_parties: Any, world_size: int
) -> None:
    """The other half of the one rule (README, Limitations): a public operand of +/- or a fill
    value of where/masked_fill beyond 2**24 is a mask: it saturates to +-2**24, with a
    SaturationWarning, the same on every party."""

    def body(party: Any) -> list[torch.Tensor]:
        with cl.use_party(party), warnings.catch_warnings():
            warnings.simplefilter("ignore", SaturationWarning)  # one per op; checked below
            x = cl.cryptensor(X)
            keep = torch.tensor([True, False, True])
            outs = [x + 3e15, torch.where(keep, x, 1e16), x.masked_fill(~keep, float("-inf"))]
            return [o.get_plain_text() for o in outs]

    for outs in run_parties(body, world_size):
        big = 2.0**24
        torch.testing.assert_close(outs[0], torch.full((3,), big))
        torch.testing.assert_close(outs[1], torch.tensor([1.0, big, 3.0]))
        torch.testing.assert_close(outs[2], torch.tensor([1.0, -big, 3.0]))


def test_public_operands_out_of_range_raise_on_every_party_naming_the_op(
    run_parties: Any, world_size: int
) -> None:
    def body(party: Any) -> tuple[list[str], torch.Tensor]:
        msgs = []
        with cl.use_party(party):
            x = cl.cryptensor(X)
            for _, case in CASES:
                try:
                    case(x)
                    msgs.append("no error")
                except EncodingError as exc:
                    msgs.append(str(exc))
            # Every party raised at the same point, so the next op still meets its peers.
            return msgs, (x * 2).get_plain_text()

    results = run_parties(body, world_size)
    for rank, (msgs, after) in enumerate(results):
        torch.testing.assert_close(after, X * 2)
        for (op, _), msg in zip(CASES, msgs, strict=True):
            assert msg.startswith(f"party {rank}: {op}"), msg
            assert "out of the fixed-point range" in msg or "cannot encode NaN" in msg, msg


def test_cryptensor_and_encrypt_module_inputs_out_of_range(
    run_parties: Any, world_size: int
) -> None:
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight[1, 2] = 1e15

    def body(party: Any) -> tuple[str, str, torch.Tensor]:
        with cl.use_party(party):
            try:
                cl.cryptensor(torch.tensor([1.0, 2e15]) if party.rank == 0 else None)
                a = "no error"
            except EncodingError as exc:
                a = str(exc)
            try:
                cl.encrypt_module(nn.Linear(3, 2) if party.rank else lin)
                b = "no error"
            except EncodingError as exc:
                b = str(exc)
            return a, b, cl.cryptensor(X).get_plain_text()

    for rank, (a, b, after) in enumerate(run_parties(body, world_size)):
        assert a.startswith(f"party {rank}: cryptensor"), a
        assert b.startswith(f"party {rank}: encrypt_module: party 0's `weight` cannot be"), b
        torch.testing.assert_close(after, X)


def test_with_an_explicit_shape_the_others_are_stopped_not_left_waiting(
    run_parties: Any, world_size: int
) -> None:
    """With ``shape`` given no message carries the failure: party 0 raises, and the runner
    wakes every other party (PartyFailedError) instead of letting them time out."""

    def body(party: Any) -> Any:
        with cl.use_party(party):
            x = cl.cryptensor(torch.tensor([1e16]) if party.rank == 0 else None, shape=(1,))
            return x.get_plain_text()

    with pytest.raises((EncodingError, PartyFailedError)) as info:
        run_parties(body, world_size, timeout_s=60.0)
    assert "cryptensor" in str(info.value)
