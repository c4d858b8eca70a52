"""Z_2^64 on int64: wrap-around, unsigned views, logical shifts, bilinear ops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crypten_lite.runtime.ring import (
    BILINEAR_OPS,
    bilinear,
    bilinear_output_shape,
    freeze_params,
    logical_rshift,
    msb,
    unsigned_lt,
    wrap,
)

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
I64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)


def t(*values: int) -> torch.Tensor:
    return torch.tensor([wrap(v) for v in values], dtype=torch.int64)


@given(U64)
def test_wrap_is_the_signed_representative(v: int) -> None:
    w = wrap(v)
    assert -(1 << 63) <= w < (1 << 63)
    assert (w - v) % (1 << 64) == 0


@given(I64, I64, I64)
def test_ring_ops_are_mod_2_64(a: int, b: int, c: int) -> None:
    ta, tb, tc = t(a), t(b), t(c)
    assert int((ta + tb)[0]) == wrap(a + b)
    assert int((ta * tb)[0]) == wrap(a * b)
    assert int((ta - tb)[0]) == wrap(a - b)
    # linearity: (a + b) * c == a*c + b*c mod 2**64
    assert torch.equal((ta + tb) * tc, ta * tc + tb * tc)


@given(I64, st.integers(min_value=0, max_value=63))
def test_logical_rshift_and_msb(v: int, k: int) -> None:
    x = t(v)
    unsigned = v % (1 << 64)
    assert int(logical_rshift(x, k)[0]) == wrap(unsigned >> k)
    assert int(msb(x)[0]) == unsigned >> 63


@given(U64, U64)
def test_unsigned_lt(a: int, b: int) -> None:
    assert bool(unsigned_lt(t(a), t(b))[0]) == (a < b)


def test_logical_rshift_zero_copies() -> None:
    x = t(-5)
    y = logical_rshift(x, 0)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


@given(
    st.lists(I64, min_size=6, max_size=6),
    st.lists(I64, min_size=6, max_size=6),
    st.lists(I64, min_size=6, max_size=6),
)
def test_matmul_is_bilinear_mod_2_64(a: list[int], a2: list[int], b: list[int]) -> None:
    A, A2, B = t(*a).reshape(2, 3), t(*a2).reshape(2, 3), t(*b).reshape(3, 2)
    assert torch.equal(bilinear("matmul", A + A2, B), bilinear("matmul", A, B) + A2 @ B)
    # exact against Python integers
    expect = [
        [wrap(sum(a[i * 3 + j] * b[j * 2 + k] for j in range(3))) for k in range(2)]
        for i in range(2)
    ]
    assert (A @ B).tolist() == expect


@pytest.mark.parametrize(
    ("op", "a", "b", "params"),
    [
        ("mul", (3, 1), (1, 4), None),
        ("matmul", (2, 5, 3), (3, 4), None),
        ("conv1d", (2, 3, 10), (4, 3, 3), {"stride": 2, "padding": 1}),
        ("conv2d", (1, 1, 28, 28), (6, 1, 5, 5), None),
        ("conv2d", (2, 4, 9, 9), (6, 2, 3, 3), {"groups": 2, "dilation": [2, 1]}),
        ("conv_transpose1d", (2, 3, 7), (3, 5, 3), {"stride": 2, "output_padding": 1}),
        ("conv_transpose2d", (1, 3, 5, 5), (3, 2, 3, 3), {"stride": 2, "padding": 1}),
        ("einsum", (2, 3, 4), (2, 4, 5), {"equation": "bij,bjk->bik"}),
        ("einsum", (3,), (4,), {"equation": "i,j->ij"}),
    ],
)
def test_bilinear_ops_and_shapes(op: str, a: tuple, b: tuple, params: dict | None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-100, 100, a, generator=g)
    y = torch.randint(-100, 100, b, generator=g)
    out = bilinear(op, x, y, params)
    ref = bilinear(op, x.double(), y.double(), params)
    assert torch.equal(out, ref.to(torch.int64))
    assert bilinear_output_shape(op, a, b, params) == tuple(out.shape)
    assert bilinear_output_shape(op, a, b, params) == tuple(out.shape)  # cached path


def test_bilinear_errors() -> None:
    with pytest.raises(ValueError, match="unknown bilinear op"):
        bilinear("exp", torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="unknown bilinear op"):
        bilinear_output_shape("nope", (1,), (1,))
    with pytest.raises(RuntimeError):
        bilinear_output_shape("matmul", (2, 3), (4, 5))
    assert set(BILINEAR_OPS) >= {"mul", "matmul", "conv1d", "conv2d", "conv_transpose2d", "einsum"}
    with pytest.raises(ValueError, match="two-operand"):
        bilinear("einsum", torch.zeros(2), torch.zeros(2), {"equation": "i,i,i->"})


def test_freeze_params_is_order_and_container_independent() -> None:
    assert freeze_params({"a": [1, 2], "b": 3}) == freeze_params({"b": 3, "a": (1, 2)})
    assert freeze_params(None) == freeze_params({}) == ()


def test_polynomial_fit_is_the_same_in_every_thread() -> None:
    """Public coefficients must be bit-identical on every party: parties that scale their
    shares by different constants get a silently wrong result. Threads computing the same
    fit at once (as party threads do) must agree to the last bit."""
    import threading

    from crypten_lite.protocols import polynomial

    fit = polynomial.fit.__wrapped__  # uncached: each thread computes it
    results: list[tuple[float, ...]] = []
    lock = threading.Lock()

    def work() -> None:
        c = fit(torch.atan, -1.0, 1.0, 15, False)
        with lock:
            results.append(c)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert len(results) == 4 and len(set(results)) == 1
