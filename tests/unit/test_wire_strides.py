"""Wire payloads of tensors with any strides (issue 11): a one-element view ``x[:, j]`` of a
one-row tensor is contiguous with stride 3 and a storage offset; it must be sendable, and a
contiguous tensor must still be read in place (no copy)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from crypten_lite.runtime.wire import (
    decode_header,
    encode_header,
    tensor_from_payload,
    tensor_payload,
)


def _round_trip(t: torch.Tensor) -> torch.Tensor:
    header = decode_header(encode_header(0, 0, "t", t.dtype, tuple(t.shape)), 1 << 30)
    return tensor_from_payload(header, bytes(tensor_payload(t)))


def test_one_element_views_with_any_stride_and_offset() -> None:
    x = torch.arange(6, dtype=torch.int64).reshape(1, 6)
    views = [x[:, j] for j in range(6)] + list(x.unbind(1)) + [x[:, 2:3], x.t()[4]]
    for v in views:
        assert torch.equal(_round_trip(v), v)


@given(
    rows=st.integers(1, 4),
    cols=st.integers(1, 4),
    dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool, torch.float32]),
    data=st.data(),
)
def test_every_slice_of_a_matrix_round_trips(
    rows: int, cols: int, dtype: torch.dtype, data
) -> None:
    x = (torch.arange(rows * cols * 2) % 7).to(dtype).reshape(rows, cols * 2)
    j = data.draw(st.integers(0, cols * 2 - 1))
    for v in (
        x[:, j],
        x[:, j : j + 1],
        x.t(),
        x[:, ::2],
        x[rows - 1 :, j:],
        x.unsqueeze(0)[:, :, j],
    ):
        assert torch.equal(_round_trip(v), v)


def test_contiguous_payloads_are_not_copied() -> None:
    x = torch.arange(12, dtype=torch.int64).reshape(3, 4)
    for v in (x, x[1:], x[1], x[1:2, :]):
        payload = tensor_payload(v)
        raw = torch.frombuffer(payload, dtype=torch.uint8)
        assert raw.data_ptr() == v.data_ptr()
