"""Regression tests for the bugs of issue 11 ("Bugs found"), for 2 and 3 parties as threads.

Plain torch is the oracle; tolerances are in ulps of the default encoding (f = 16). Every test
also checks that the parties stay in step: a final ``get_plain_text`` after the tested call
would fail with a desynchronisation error if one party had communicated and the others not.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import crypten_lite as cl
from crypten_lite.errors import (
    EncodingError,
    PartyFailedError,
    UnsupportedOperationError,
)

ULP = 2.0**-16
GEN = torch.Generator().manual_seed(11)


def on_parties(
    run_parties: Callable[..., list[Any]], n: int, fn: Callable[[Any], Any]
) -> list[Any]:
    """Run ``fn(party)`` on every party with that party current; results by rank."""

    def body(party: Any) -> Any:
        with cl.use_party(party):
            return fn(party)

    return run_parties(body, n)


# --------------------------------------------------------------- strided one-element views


def test_one_element_views_with_stride_can_be_opened(run_parties, world_size) -> None:
    """``x[:, j]`` and ``x.unbind(1)`` of a one-row tensor (stride 3, offset j) are sendable."""
    x = torch.randn(1, 3, generator=GEN) * 100

    def fn(party: Any) -> Any:
        xe = cl.cryptensor(x)
        cols = [xe[:, j].get_plain_text() for j in range(3)]
        parts = [t.get_plain_text() for t in xe.unbind(1)]
        to_one = xe[:, 2].get_plain_text(dst=world_size - 1)
        ops = (xe[:, 1] * xe[:, 2]).get_plain_text()  # a Beaver product opens strided views
        return cols, parts, to_one, ops

    for rank, (cols, parts, to_one, ops) in enumerate(on_parties(run_parties, world_size, fn)):
        for j in range(3):
            torch.testing.assert_close(cols[j], x[:, j], atol=ULP, rtol=0)
            torch.testing.assert_close(parts[j], x[:, j], atol=ULP, rtol=0)
        if rank == world_size - 1:
            torch.testing.assert_close(to_one, x[:, 2], atol=ULP, rtol=0)
        else:
            assert to_one is None
        torch.testing.assert_close(ops, x[:, 1] * x[:, 2], atol=1e-2, rtol=1e-4)


# --------------------------------------------------------------- invalid input to cryptensor

INVALID: list[Any] = [
    None,
    "abc",
    object(),
    [[1.0, 2.0], [3.0]],
    [1.0, float("nan")],
    torch.tensor([1e30]),
]


@pytest.mark.parametrize("bad", INVALID, ids=["None", "str", "object", "ragged", "nan", "huge"])
def test_invalid_cryptensor_input_fails_on_every_party(run_parties, world_size, bad) -> None:
    def fn(party: Any) -> Any:
        try:
            cl.cryptensor(bad if party.rank == 0 else None)
        except (TypeError, ValueError) as exc:
            error: Any = exc
        else:
            error = None
        after = cl.cryptensor(torch.tensor([1.5, -2.0])).get_plain_text()  # still in step
        return error, after

    results = on_parties(run_parties, world_size, fn)
    assert results[0][0] is not None and "party 0" in str(results[0][0])
    for error, _ in results[1:]:
        assert isinstance(error, EncodingError)
        assert "party 0 could not encode its input" in str(error)
    for _, after in results:
        assert torch.equal(after, torch.tensor([1.5, -2.0]))


def test_encrypted_input_to_cryptensor_fails_on_every_party(run_parties, world_size) -> None:
    def fn(party: Any) -> Any:
        xe = cl.cryptensor(torch.ones(2))
        try:
            cl.cryptensor(xe)
        except (TypeError, ValueError) as exc:
            return str(exc)
        return "no error"

    messages = on_parties(run_parties, world_size, fn)
    assert "already shared" in messages[0]
    assert all("could not encode" in m for m in messages[1:])


def test_invalid_input_with_a_known_shape_fails_the_others_at_their_next_receive(
    run_parties, world_size
) -> None:
    """With ``shape`` given nobody waits in share(); the others fail at their next message."""

    def fn(party: Any) -> Any:
        try:
            cl.cryptensor(torch.ones(3) if party.rank == 0 else None, shape=(2,))
        except ValueError as exc:
            return f"source: {exc}"
        try:
            cl.cryptensor(torch.ones(2), shape=(2,)).get_plain_text()
        except PartyFailedError as exc:
            return f"peer: {exc}"
        return "no error"

    messages = on_parties(run_parties, world_size, fn)
    assert messages[0].startswith("source: ") and "shape (2,) given" in messages[0]
    assert all(
        m.startswith("peer: ") and "party 0 could not share its input" in m for m in messages[1:]
    ), messages


# --------------------------------------------------------------- softmax of a 0-dim tensor


@pytest.mark.parametrize("fn_name", ["softmax", "log_softmax"])
def test_softmax_of_a_zero_dim_tensor(run_parties, world_size, fn_name) -> None:
    x = torch.tensor(3.25)
    op = getattr(torch, fn_name)
    x_ref = x.clone().requires_grad_(True)
    want = op(x_ref, 0)
    (want * 2.0).backward()

    def fn(party: Any) -> Any:
        xe = cl.cryptensor(x, requires_grad=True)
        out = op(xe, 0)
        via_module = getattr(torch.nn, "Softmax" if fn_name == "softmax" else "LogSoftmax")(0)
        (out * 2.0).backward()
        return out.get_plain_text(), xe.grad.get_plain_text(), via_module(xe).get_plain_text()

    for out, grad, via_module in on_parties(run_parties, world_size, fn):
        torch.testing.assert_close(out, want.detach(), atol=ULP, rtol=0)
        torch.testing.assert_close(via_module, want.detach(), atol=ULP, rtol=0)
        torch.testing.assert_close(grad, x_ref.grad, atol=4 * ULP, rtol=0)


# --------------------------------------------------------------- BinaryMPCTensor


def test_binary_tensor_has_a_device_and_prints_locally(run_parties, world_size) -> None:
    def fn(party: Any) -> Any:
        b = cl.cryptensor(torch.tensor([1.0, -2.0])).to_binary()
        sent = party.comm.stats.total.messages_sent
        texts = [repr(b), str(b), f"{b}", f"{b:>40}"] if party.rank == 0 else []
        assert party.comm.stats.total.messages_sent == sent
        return b.device, texts, b.get_plain_text()

    for device, texts, plain in on_parties(run_parties, world_size, fn):
        assert device == torch.device("cpu")
        assert all(t.startswith("BinaryMPCTensor(shape=(2,)") for t in texts)
        assert torch.equal(plain, torch.tensor([1.0, -2.0]))


# --------------------------------------------------------------- operators keep our message


def test_operators_raise_the_library_error_not_a_bare_type_error(run_parties, world_size) -> None:
    def fn(party: Any) -> Any:
        xe = cl.cryptensor(torch.tensor([3.0, -7.5]))
        messages = {}
        for name, call in {
            "x / 0.0": lambda: xe / 0.0,
            "x / zeros": lambda: xe / torch.zeros(2),
            "x /= 0": lambda: xe.__itruediv__(0),
            "2 // x": lambda: 2 // xe,
            "x // x": lambda: xe // xe,
            "2 % x": lambda: 2 % xe,
        }.items():
            try:
                call()
            except UnsupportedOperationError as exc:
                messages[name] = str(exc)
        fine = [(xe + 1), (1 - xe), (xe * 2), (xe / 4), (2 ** torch.tensor(1.0)) * xe]
        return messages, [t.get_plain_text() for t in fine]

    x = torch.tensor([3.0, -7.5])
    for rank, (messages, fine) in enumerate(on_parties(run_parties, world_size, fn)):
        assert set(messages) == {
            "x / 0.0",
            "x / zeros",
            "x /= 0",
            "2 // x",
            "x // x",
            "2 % x",
        }
        for text in messages.values():
            assert text.startswith(f"party {rank}: ") and "unsupported operand" not in text
        assert "by a public zero" in messages["x / 0.0"]
        assert "by an encrypted" in messages["2 // x"]
        assert "encrypted" in messages["x // x"] and "encrypted" in messages["2 % x"]
        for got, want in zip(fine, [x + 1, 1 - x, x * 2, x / 4, 2 * x], strict=True):
            torch.testing.assert_close(got, want, atol=ULP, rtol=0)


def test_operators_still_defer_to_foreign_operands(run_parties) -> None:
    """An operand torch cannot take still gets its reflected operator (NotImplemented path)."""

    class Other:
        def __radd__(self, other: Any) -> str:
            return "Other.__radd__"

        def __rfloordiv__(self, other: Any) -> str:
            return "Other.__rfloordiv__"

    def fn(party: Any) -> Any:
        xe = cl.cryptensor(torch.ones(2))
        return xe + Other(), xe // Other(), xe == "text", hash(xe) == hash(xe)

    for result in on_parties(run_parties, 2, fn):
        assert result == ("Other.__radd__", "Other.__rfloordiv__", False, True)


# --------------------------------------------------------------- other float dtypes


@pytest.mark.filterwarnings("ignore:encrypted tensors are fixed point:UserWarning")
def test_casts_to_other_float_dtypes_warn_and_keep_float32(run_parties, world_size) -> None:
    x = torch.tensor([0.5, -1.25, 3.0])

    def casts(xe: Any) -> list[Any]:
        return [
            xe.double(),
            xe.half(),
            xe.bfloat16(),
            xe.to(torch.float64),
            xe.to(dtype=torch.float16),
        ]

    def fn(party: Any) -> Any:
        xe = cl.cryptensor(x)
        texts: list[str] = []
        if party.rank == 0:
            # The warnings filter is process-wide: record on party 0 alone, while the others
            # wait for its message below.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                casts(xe)
                xe.float(), xe.to(torch.float32)
            texts = [str(w.message) for w in caught]
        xe.get_plain_text()
        done = casts(xe) + [xe.float(), xe.to(torch.float32)]
        return texts, [(t.dtype, t.get_plain_text()) for t in done]

    results = on_parties(run_parties, world_size, fn)
    texts = results[0][0]
    assert len(texts) == 5 and all("keeps dtype torch.float32" in t for t in texts)
    for _, done in results:
        for dtype, value in done:
            assert dtype == torch.float32
            assert torch.equal(value, x)


# --------------------------------------------------------------- printing never communicates


def test_every_text_path_is_local(run_parties, world_size) -> None:
    """Only party 0 prints: any message sent would desynchronise the final opening."""
    x = torch.randn(2, 3, generator=GEN)

    def fn(party: Any) -> Any:
        xe = cl.cryptensor(x, requires_grad=True)
        param = torch.nn.Parameter(cl.cryptensor(x))
        scalar = xe.sum()
        texts: list[str] = []
        sent = party.comm.stats.total.messages_sent
        if party.rank == 0:
            texts = [
                torch.Tensor.__repr__(xe),
                torch.Tensor.__format__(xe, ""),
                torch.Tensor.__format__(scalar, ".3f"),
                repr(xe),
                str(xe),
                f"{xe}",
                f"{scalar:.4f}",
                "%s" % (xe,),  # noqa: UP031 - the old formatting path too
                repr(param),
                str([xe, scalar]),
            ]
        assert party.comm.stats.total.messages_sent == sent
        return texts, xe.get_plain_text()

    results = on_parties(run_parties, world_size, fn)
    texts = results[0][0]
    assert len(texts) == 10
    for t in texts:
        assert "MPCTensor(shape=" in t
        assert f"{float(x[0, 0]):.3f}" not in t
    for _, plain in results:
        torch.testing.assert_close(plain, x, atol=ULP, rtol=0)


# --------------------------------------------------------------- plain tensors with grad


def test_plain_leaf_gets_an_encrypted_gradient_or_a_clear_error(run_parties, world_size) -> None:
    x = torch.randn(3, generator=GEN)
    w = torch.randn(3, generator=GEN)

    def fn(party: Any) -> Any:
        xe = cl.cryptensor(x, requires_grad=True)
        fresh = w.clone().requires_grad_(True)
        (xe * fresh).sum().backward()  # .grad is None: it receives the encrypted gradient
        grad = fresh.grad.get_plain_text()
        held = w.clone().requires_grad_(True)
        held.grad = torch.zeros(3)
        try:
            (xe * held).sum().backward()
        except UnsupportedOperationError as exc:
            message = str(exc)
        else:
            message = "no error"
        constant = w.clone()  # the documented contract: public arguments are constants
        (xe * constant).sum().backward()
        return grad, message, constant.grad, xe.grad.get_plain_text()

    for rank, (grad, message, const_grad, xgrad) in enumerate(
        on_parties(run_parties, world_size, fn)
    ):
        torch.testing.assert_close(grad, x, atol=ULP, rtol=0)
        assert message.startswith(f"party {rank}: a plain tensor of shape (3,) that requires grad")
        assert "optimizer.zero_grad()" in message and "requires_grad=False" in message
        assert const_grad is None
        torch.testing.assert_close(xgrad, 3 * w, atol=4 * ULP, rtol=0)


# --------------------------------------------------------------- floor division, remainder


def test_floor_division_and_remainder_by_powers_of_two_are_exact(run_parties, world_size) -> None:
    """Against torch on the encoded values (multiples of 2**-16), over the whole range."""
    gen = torch.Generator().manual_seed(12)
    edges = [0.0, 2.0**-16, -(2.0**-16), 4.0, -4.0, 3.0, -3.0, 7.99998, -8.0, 1e6, -1e6, 1e9]
    x = torch.cat(
        [
            torch.randn(500, generator=gen) * 10.0 ** torch.randint(-2, 7, (500,), generator=gen),
            torch.tensor(edges),
        ]
    )
    xq = torch.round(x.double() * 2**16) / 2**16
    divisors = [1, 2, 8, -4, 0.5 * 4]

    def fn(party: Any) -> Any:
        xe = cl.cryptensor(x)
        out = []
        for d in divisors:
            y = xe.clone()
            y //= d  # in place
            out.append(
                (
                    (xe // d).get_plain_text(),
                    (xe % d).get_plain_text(),
                    torch.div(xe, d, rounding_mode="floor").get_plain_text(),
                    y.get_plain_text(),
                )
            )
        return out

    for results in on_parties(run_parties, world_size, fn):
        for d, (floor, rem, div_floor, inplace) in zip(divisors, results, strict=True):
            torch.testing.assert_close(floor, torch.floor_divide(xq, d).float(), atol=0, rtol=0)
            torch.testing.assert_close(rem, torch.remainder(xq, d).float(), atol=0, rtol=0)
            assert torch.equal(div_floor, floor) and torch.equal(inplace, floor)
