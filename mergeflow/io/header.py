"""Parse and check a safetensors header without trusting it.

The header is 8 bytes of little-endian length, then that many bytes of JSON mapping tensor
names to dtype, shape and [begin, end) offsets into the data that follows. A file from a
stranger may lie: we bound the header size, check every dtype, that each byte range matches
its shape, lies inside the file, and that ranges neither overlap nor leave holes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from mergeflow.errors import InputError, ModelError
from mergeflow.files import check_regular
from mergeflow.io.dtypes import ITEMSIZE

MAX_HEADER = 100_000_000  # safetensors' own limit: a larger header passes here only to fail there


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: str
    begin: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return prod(self.shape)


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors by name, __metadata__) of one safetensors file; ModelError when anything is off."""
    path = str(path)
    try:
        size = check_regular(path, "checkpoint file").st_size  # a FIFO or device would block or never end
    except InputError as exc:
        raise ModelError(str(exc)) from None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise ModelError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise ModelError(
                    f"{path}: corrupt safetensors header (declares {n} header bytes, file has {size})"
                )
            text = fh.read(n)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: corrupt safetensors header (invalid JSON: {exc})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: corrupt safetensors header (__metadata__ is not an object)")
    data_start = 8 + n
    data_len = size - data_start
    out: dict[str, TensorInfo] = {}
    for name, info in header.items():
        out[name] = _tensor(path, name, info, data_start, data_len)
    spans = sorted((t.begin, t.end, t.name) for t in out.values())
    cursor = data_start
    for begin, end, name in spans:
        if begin < cursor:
            raise ModelError(f"{path}: corrupt safetensors header (tensor {name!r} overlaps another)")
        if begin > cursor:
            raise ModelError(f"{path}: corrupt safetensors header (gap before tensor {name!r})")
        cursor = end
    if cursor != size:
        raise ModelError(
            f"{path}: truncated or padded safetensors file (data ends at {cursor}, file is {size} bytes)"
        )
    return out, {str(k): str(v) for k, v in meta.items()}


def _tensor(path: str, name: str, info: object, data_start: int, data_len: int) -> TensorInfo:
    def bad(why: str) -> ModelError:
        return ModelError(f"{path}: corrupt safetensors header for tensor {name!r}: {why}")

    if not isinstance(info, dict):
        raise bad("entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in ITEMSIZE:
        raise bad(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in shape
    ):
        raise bad(f"invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise bad(f"invalid data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise bad(f"data_offsets {offsets} outside the file's {data_len} data bytes (truncated file?)")
    if prod(shape) * ITEMSIZE[dtype] != end - begin:
        raise bad(
            f"shape {shape} of {dtype} needs {prod(shape) * ITEMSIZE[dtype]} bytes, offsets give {end - begin}"
        )
    return TensorInfo(name, dtype, tuple(shape), path, data_start + begin, data_start + end)


def header_digest(path: str | Path) -> str:
    """SHA-256 of a safetensors file's length prefix and header (other files: of their first 1 MiB)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        size = int.from_bytes(head, "little") if str(path).endswith(".safetensors") and len(head) == 8 else 0
        body = fh.read(min(size, 100 << 20) if size else 1 << 20)
    return hashlib.sha256(head + body).hexdigest()
