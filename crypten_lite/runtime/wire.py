"""Layer L2: the wire format of one message between two parties.

A message is two ZeroMQ frames (or two Python objects in the in-process transport): a small
versioned header and the raw tensor bytes. Nothing is ever pickled; a peer is untrusted, so every
field is checked before anything is allocated.

Header layout (little-endian, 16 bytes + 8 per dimension + the tag)::

    offset  size  field
    0       2     magic  b"CL"
    2       1     version (WIRE_VERSION)
    3       1     dtype code (see _DTYPES)
    4       2     sender rank (uint16)
    6       1     ndim (<= MAX_NDIM)
    7       1     tag length in bytes (<= MAX_TAG_BYTES)
    8       8     sequence number of this message from sender to receiver (uint64)
    16      8*nd  shape, one int64 per dimension (each >= 0)
    ..      tlen  tag, UTF-8 (the protocol op that sent it, e.g. ``"beaver.mul"``)

Payload: ``prod(shape) * itemsize`` bytes, C-contiguous, native little-endian layout of the
tensor (bool as one byte, bfloat16 as its 2-byte pattern).
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass, field

import numpy
import torch

from crypten_lite.errors import ProtocolError

__all__ = [
    "Header",
    "MAX_NDIM",
    "MAX_TAG_BYTES",
    "NUMPY_DTYPES",
    "WIRE_VERSION",
    "decode_header",
    "encode_header",
    "payload_nbytes",
    "tensor_from_payload",
    "tensor_payload",
]

WIRE_VERSION = 1
MAGIC = b"CL"
MAX_NDIM = 16
MAX_TAG_BYTES = 255
_FIXED = struct.Struct("<2sBBHBBQ")

# dtype code <-> torch dtype. Codes are part of the wire format: never renumber.
_DTYPES: dict[int, torch.dtype] = {
    1: torch.int64,
    2: torch.int32,
    3: torch.int16,
    4: torch.int8,
    5: torch.uint8,
    6: torch.bool,
    7: torch.float64,
    8: torch.float32,
    9: torch.float16,
    10: torch.bfloat16,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
# Bytes per element, computed once: asking torch per message costs microseconds on the hot path.
_ITEMSIZE = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in _DTYPES.values()}


@dataclass(frozen=True)
class Header:
    """The decoded header of one message.

    ``nbytes`` is the payload size in bytes that this header announces (computed once).
    """

    sender: int
    seq: int
    tag: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", payload_nbytes(self.dtype, self.shape))


def payload_nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    """Bytes of a C-contiguous tensor of this dtype and shape."""
    itemsize = _ITEMSIZE.get(dtype) or torch.empty((), dtype=dtype).element_size()
    return math.prod(shape) * itemsize


# Headers repeat: a protocol sends the same tag, dtype and shape over and over, only the
# sequence number changes. Both ends keep what they packed or validated once, keyed by
# everything but the sequence number (bytes 8..16); bounded, since a peer chooses the keys.
_CACHE_LIMIT = 4096
_ENCODED: dict[tuple[int, str, torch.dtype, tuple[int, ...]], tuple[bytes, bytes]] = {}
_DECODED: dict[bytes, tuple[int, str, torch.dtype, tuple[int, ...], int]] = {}
_SEQ = struct.Struct("<Q")


def encode_header(
    sender: int, seq: int, tag: str, dtype: torch.dtype, shape: tuple[int, ...]
) -> bytes:
    """Pack a header (layout in the module docstring).

    Raises:
        ProtocolError: the dtype has no wire code, or the shape or tag is too large.
    """
    key = (sender, tag, dtype, shape)
    parts = _ENCODED.get(key)
    if parts is None:
        whole = _encode_header(sender, 0, tag, dtype, shape)
        if len(_ENCODED) >= _CACHE_LIMIT:
            _ENCODED.clear()
        parts = _ENCODED[key] = (whole[:8], whole[16:])
    return parts[0] + _SEQ.pack(seq) + parts[1]


def _encode_header(
    sender: int, seq: int, tag: str, dtype: torch.dtype, shape: tuple[int, ...]
) -> bytes:
    code = _CODES.get(dtype)
    if code is None:
        raise ProtocolError(f"dtype {dtype} cannot be sent (supported: {sorted(map(str, _CODES))})")
    tag_bytes = tag.encode("utf-8")
    if len(tag_bytes) > MAX_TAG_BYTES:
        raise ProtocolError(f"op tag {tag[:40]!r}... is longer than {MAX_TAG_BYTES} bytes")
    if len(shape) > MAX_NDIM:
        raise ProtocolError(f"tensors of {len(shape)} dimensions cannot be sent (max {MAX_NDIM})")
    fixed = _FIXED.pack(MAGIC, WIRE_VERSION, code, sender, len(shape), len(tag_bytes), seq)
    return fixed + struct.pack(f"<{len(shape)}q", *shape) + tag_bytes


def decode_header(data: bytes | memoryview, max_payload_bytes: int) -> Header:
    """Unpack and validate a header received from an untrusted peer.

    Raises:
        ProtocolError: bad magic, unknown version or dtype, a length that does not match, a
            negative dimension, an invalid tag, or a payload larger than ``max_payload_bytes``
            (checked before anything is allocated).
    """
    data = bytes(data)
    key = data[:8] + data[16:]
    known = _DECODED.get(key)
    if known is not None:
        sender, tag, dtype, shape, nbytes = known
        if nbytes > max_payload_bytes:
            raise ProtocolError(
                f"frame announces a {nbytes}-byte tensor, more than the limit of "
                f"{max_payload_bytes} bytes"
            )
        return Header(
            sender=sender, seq=_SEQ.unpack_from(data, 8)[0], tag=tag, dtype=dtype, shape=shape
        )
    header = _decode_header(data, max_payload_bytes)
    if len(_DECODED) >= _CACHE_LIMIT:
        _DECODED.clear()
    _DECODED[key] = (header.sender, header.tag, header.dtype, header.shape, header.nbytes)
    return header


def _decode_header(data: bytes, max_payload_bytes: int) -> Header:
    if len(data) < _FIXED.size:
        raise ProtocolError(f"truncated frame header ({len(data)} bytes)")
    magic, version, code, sender, ndim, tag_len, seq = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("frame does not start with the crypten_lite magic bytes")
    if version != WIRE_VERSION:
        raise ProtocolError(f"peer speaks wire version {version}, this party speaks {WIRE_VERSION}")
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise ProtocolError(f"unknown dtype code {code} in frame header")
    if ndim > MAX_NDIM:
        raise ProtocolError(f"frame announces {ndim} dimensions (max {MAX_NDIM})")
    expected = _FIXED.size + 8 * ndim + tag_len
    if len(data) != expected:
        raise ProtocolError(f"frame header is {len(data)} bytes, its fields say {expected}")
    shape = struct.unpack_from(f"<{ndim}q", data, _FIXED.size)
    if any(d < 0 for d in shape):
        raise ProtocolError(f"frame announces a negative dimension {shape}")
    # Python integers do not overflow: compute the size exactly before comparing.
    itemsize = _ITEMSIZE[dtype]
    if math.prod(shape) * itemsize > max_payload_bytes:
        raise ProtocolError(
            f"frame announces a {math.prod(shape) * itemsize}-byte tensor, more than the "
            f"limit of {max_payload_bytes} bytes"
        )
    try:
        tag = data[_FIXED.size + 8 * ndim :].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("frame tag is not valid UTF-8") from None
    return Header(sender=sender, seq=seq, tag=tag, dtype=dtype, shape=tuple(shape))


# torch dtype -> numpy dtype, for every wire dtype numpy can represent (bfloat16 cannot).
# Both ends use it: a contiguous tensor of these dtypes is viewed, and received, through numpy
# in one call instead of several torch calls.
NUMPY_DTYPES: dict[torch.dtype, type[numpy.generic]] = {
    torch.int64: numpy.int64,
    torch.int32: numpy.int32,
    torch.int16: numpy.int16,
    torch.int8: numpy.int8,
    torch.uint8: numpy.uint8,
    torch.bool: numpy.bool_,
    torch.float64: numpy.float64,
    torch.float32: numpy.float32,
    torch.float16: numpy.float16,
}


def tensor_payload(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a tensor's data (a copy only if it is not contiguous).

    Any strides are accepted: a non-contiguous tensor (a transpose, ``x[:, j]``) is copied
    once; a contiguous one is read in place, whatever strides its size-1 dimensions carry (a
    one-element view ``x[:, j]`` of a one-row tensor is contiguous with stride 3).
    """
    if (
        type(tensor) is torch.Tensor
        and tensor.dtype in NUMPY_DTYPES
        and not tensor.requires_grad
        and tensor.is_cpu  # not .device.type: building a device object costs microseconds
        and tensor.is_contiguous()
        and tensor.storage_offset() == 0
    ):
        # Fast path for the common case (two torch calls instead of five): shares are plain,
        # contiguous CPU tensors. Empty tensors take the general path (numpy gives them zero
        # strides, which a memoryview cannot cast).
        if tensor.numel():
            return memoryview(tensor.numpy()).cast("B")  # type: ignore[arg-type]
    dense = tensor.detach()
    if not dense.is_contiguous():
        dense = dense.contiguous()
    # A contiguous tensor's elements lie densely from its storage offset, so a 1-D unit-stride
    # view of them exists without a copy. reshape(-1) would keep a size-1 dimension's stride,
    # which the byte view below refuses (torch needs stride 1 to reinterpret int64 as bytes).
    flat = dense.as_strided((dense.numel(),), (1,))
    if flat.device.type != "cpu":
        flat = flat.cpu()
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


def tensor_from_payload(header: Header, payload: bytes | bytearray | memoryview) -> torch.Tensor:
    """Rebuild the tensor a header describes from its payload bytes.

    The result owns writable memory: a read-only buffer (``bytes``) is copied once, a writable
    one (``bytearray``, a receive buffer) is used in place.

    Raises:
        ProtocolError: the payload length differs from what the header announces.
    """
    view = memoryview(payload)
    if view.nbytes != header.nbytes:
        raise ProtocolError(
            f"payload of {view.nbytes} bytes for a {header.dtype} tensor of shape "
            f"{header.shape} ({header.nbytes} bytes)"
        )
    if header.nbytes == 0:
        return torch.empty(header.shape, dtype=header.dtype)
    if view.readonly:
        view = memoryview(bytearray(view))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = torch.frombuffer(view, dtype=torch.uint8)
    return raw.view(header.dtype).reshape(header.shape)
