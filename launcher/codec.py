"""Layer L6: passing ``launch()`` arguments and results between processes, without pickle.

Supported values: ``None``, ``bool``, ``int``, ``float``, ``str``, ``torch.Tensor`` (CPU copy;
dtypes of :mod:`crypten_lite.runtime.wire`), and ``list`` / ``tuple`` / ``dict`` of supported values
(dict keys: ``None``, ``bool``, ``int``, ``float`` or ``str``). Anything else is refused with a
``TypeError`` naming where it was found — arbitrary objects would need pickle, which can run
code when loaded.

File layout (little-endian)::

    offset  size  field
    0       4     magic b"CLV1"
    4       8     JSON length J (uint64)
    12      J     the value as UTF-8 JSON, where a list is a JSON array and the other
                  containers are one-key objects: {"tuple": [...]}, {"dict": [[key, value],
                  ...]}, {"tensor": i} (the i-th tensor below)
    12+J    ...   per tensor, in order: header length H (uint32), the crypten_lite.runtime.wire
                  header (H bytes), the raw payload (as announced by the header)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from crypten_lite.errors import ProtocolError
from crypten_lite.runtime.wire import (
    decode_header,
    encode_header,
    tensor_from_payload,
    tensor_payload,
)

__all__ = ["SUPPORTED", "decode_value", "encode_value", "read_value", "write_value"]

SUPPORTED = "None, bool, int, float, str, torch.Tensor, and lists, tuples and dicts of those"
_MAGIC = b"CLV1"
_SCALARS = (type(None), bool, int, float, str)


def _to_json(value: Any, tensors: list[torch.Tensor], where: str) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, torch.Tensor):
        tensors.append(value.detach().cpu())
        return {"tensor": len(tensors) - 1}
    if isinstance(value, list):
        return [_to_json(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        items = []
        for key, v in value.items():
            if not isinstance(key, _SCALARS):
                raise TypeError(f"{where}: dict key of type {type(key).__name__} ({SUPPORTED})")
            items.append([key, _to_json(v, tensors, f"{where}[{key!r}]")])
        return {"dict": items}
    raise TypeError(
        f"{where}: a {type(value).__name__} cannot be passed between processes without pickle "
        f"(supported: {SUPPORTED})"
    )


def encode_value(value: Any, where: str = "value") -> bytes:
    """Serialise a supported value (module docstring).

    Raises:
        TypeError: the value contains an unsupported object; the message says where.
    """
    tensors: list[torch.Tensor] = []
    doc = json.dumps(_to_json(value, tensors, where), separators=(",", ":")).encode("utf-8")
    parts = [_MAGIC, struct.pack("<Q", len(doc)), doc]
    for i, tensor in enumerate(tensors):
        try:
            header = encode_header(0, 0, "", tensor.dtype, tuple(tensor.shape))
        except ProtocolError as exc:
            raise TypeError(f"{where}: tensor #{i}: {exc}") from None
        parts += [struct.pack("<I", len(header)), header, bytes(tensor_payload(tensor))]
    return b"".join(parts)


def _from_json(node: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_from_json(v, tensors) for v in node]
    if isinstance(node, dict):
        if len(node) != 1:
            raise ProtocolError("malformed value file: object with several keys")
        ((kind, body),) = node.items()
        if kind == "tuple" and isinstance(body, list):
            return tuple(_from_json(v, tensors) for v in body)
        if kind == "dict" and isinstance(body, list):
            return {k: _from_json(v, tensors) for k, v in body}
        if kind == "tensor" and isinstance(body, int) and 0 <= body < len(tensors):
            return tensors[body]
        raise ProtocolError(f"malformed value file: unknown node {kind!r}")
    return node


def decode_value(data: bytes) -> Any:
    """Inverse of :func:`encode_value`.

    Raises:
        ProtocolError: the data is not a well-formed value file.
    """
    view = memoryview(data)
    if len(view) < 12 or bytes(view[:4]) != _MAGIC:
        raise ProtocolError("malformed value file: bad magic")
    (doc_len,) = struct.unpack_from("<Q", view, 4)
    offset = 12 + doc_len
    if offset > len(view):
        raise ProtocolError("malformed value file: truncated JSON")
    try:
        doc = json.loads(bytes(view[12:offset]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed value file: {exc}") from None
    tensors: list[torch.Tensor] = []
    while offset < len(view):
        if offset + 4 > len(view):
            raise ProtocolError("malformed value file: truncated tensor header")
        (header_len,) = struct.unpack_from("<I", view, offset)
        offset += 4
        header = decode_header(view[offset : offset + header_len], len(view))
        offset += header_len
        end = offset + header.nbytes
        if end > len(view):
            raise ProtocolError("malformed value file: truncated tensor payload")
        tensors.append(tensor_from_payload(header, view[offset:end]))
        offset = end
    return _from_json(doc, tensors)


def write_value(path: Path, value: Any, where: str = "value") -> None:
    """Encode ``value`` into the file ``path`` (written under a temporary name, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_value(value, where))
    tmp.replace(path)


def read_value(path: Path) -> Any:
    """Decode the value in the file ``path``."""
    return decode_value(path.read_bytes())
