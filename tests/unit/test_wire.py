"""Wire format: header round trip, rejection of corrupted or hostile headers, payloads."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.wire import (
    MAX_NDIM,
    MAX_TAG_BYTES,
    WIRE_VERSION,
    decode_header,
    encode_header,
    payload_nbytes,
    tensor_from_payload,
    tensor_payload,
)

DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float32, torch.bfloat16]
LIMIT = 1 << 32


@given(
    sender=st.integers(0, 65535),
    seq=st.integers(0, (1 << 64) - 1),
    tag=st.text(max_size=40),
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 50), max_size=5),
)
def test_header_round_trip(
    sender: int, seq: int, tag: str, dtype: torch.dtype, shape: list
) -> None:
    raw = encode_header(sender, seq, tag, dtype, tuple(shape))
    h = decode_header(raw, LIMIT)
    assert (h.sender, h.seq, h.tag, h.dtype, h.shape) == (sender, seq, tag, dtype, tuple(shape))
    assert h.nbytes == payload_nbytes(dtype, tuple(shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_payload_round_trip(dtype: torch.dtype) -> None:
    x = (torch.arange(24) - 7).reshape(2, 3, 4).to(dtype)
    raw = encode_header(1, 0, "t", x.dtype, tuple(x.shape))
    h = decode_header(raw, LIMIT)
    back = tensor_from_payload(h, bytes(tensor_payload(x)))
    assert back.dtype == dtype and torch.equal(back, x)
    back.view(-1)[0] = back.view(-1)[1]  # writable, owned


def test_payload_of_non_contiguous_and_empty_tensors() -> None:
    x = torch.arange(12).reshape(3, 4).t()
    h = decode_header(encode_header(0, 0, "t", x.dtype, tuple(x.shape)), LIMIT)
    assert torch.equal(tensor_from_payload(h, bytearray(tensor_payload(x))), x)
    e = torch.empty(0, 5, dtype=torch.int64)
    h = decode_header(encode_header(0, 0, "t", e.dtype, (0, 5)), LIMIT)
    assert tensor_from_payload(h, b"").shape == (0, 5)


def good() -> bytes:
    return encode_header(3, 7, "beaver.mul", torch.int64, (2, 3))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b"XX" + b[2:], "magic"),
        (lambda b: b[:2] + bytes([WIRE_VERSION + 1]) + b[3:], "version"),
        (lambda b: b[:3] + bytes([200]) + b[4:], "dtype"),
        (lambda b: b[:6] + bytes([MAX_NDIM + 1]) + b[7:], "dimensions"),
        (lambda b: b + b"extra", "bytes"),
        (lambda b: b[:-1], "bytes"),
        (lambda b: b[:16] + struct.pack("<q", -1) + b[24:], "negative"),
        (lambda b: b[:16] + struct.pack("<q", 1 << 40) + b[24:], "limit"),
        (lambda b: b[:-2] + b"\xff\xfe", "UTF-8"),
    ],
)
def test_corrupted_headers_are_rejected(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError, match=message):
        decode_header(mutate(good()), LIMIT)


def test_limits_on_the_sending_side() -> None:
    with pytest.raises(ProtocolError):
        encode_header(0, 0, "x" * (MAX_TAG_BYTES + 1), torch.int64, ())
    with pytest.raises(ProtocolError):
        encode_header(0, 0, "t", torch.int64, (1,) * (MAX_NDIM + 1))
    with pytest.raises(ProtocolError):
        encode_header(0, 0, "t", torch.complex64, (1,))


def test_payload_length_mismatch() -> None:
    h = decode_header(good(), LIMIT)
    with pytest.raises(ProtocolError, match="payload"):
        tensor_from_payload(h, b"\x00" * 47)


def test_cached_headers_keep_the_sequence_number_and_the_size_limit() -> None:
    """Headers packed and validated once are reused for every sequence number; the payload
    limit still applies to a header seen before under a larger limit."""
    for seq in (0, 1, 2**40, 2**64 - 1):
        raw = encode_header(3, seq, "beaver.mul", torch.int64, (4, 5))
        header = decode_header(raw, 1 << 20)
        assert (header.sender, header.seq, header.tag) == (3, seq, "beaver.mul")
        assert (header.dtype, header.shape, header.nbytes) == (torch.int64, (4, 5), 160)
    raw = encode_header(3, 7, "beaver.mul", torch.int64, (4, 5))
    with pytest.raises(ProtocolError, match="160-byte tensor"):
        decode_header(raw, 100)
    bad = bytearray(raw)
    bad[2] = 99  # another version, same shape and tag: never served from the cache
    with pytest.raises(ProtocolError, match="wire version"):
        decode_header(bytes(bad), 1 << 20)
