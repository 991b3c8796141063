"""Lazy, validated reading of .safetensors files through numpy memory maps.

The `safetensors` package's numpy API cannot return bfloat16 (numpy has no such dtype) and its torch API
would make torch a converter dependency, so the converter reads the (simple, documented) format itself:
an 8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, then the
data. Every entry is checked against the file size before any tensor is read, so a truncated or corrupt
file is a clear error. Tensors, row ranges and expert slices are read with plain positioned reads (no
memory map), so reading a multi-GiB checkpoint holds only what was asked for in memory.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np

from .errors import ConversionError

# safetensors dtype -> (numpy storage dtype, element bytes). BF16 is stored as uint16 and widened on read.
DTYPES = {
    "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
    "F64": (np.float64, 8), "I64": (np.int64, 8), "I32": (np.int32, 4), "I16": (np.int16, 2),
    "I8": (np.int8, 1), "U8": (np.uint8, 1), "BOOL": (np.bool_, 1),
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise ConversionError(f"{path.name}: truncated safetensors file (no header)")
                (n,) = struct.unpack("<Q", head)
                if n > min(_MAX_HEADER, size - 8):
                    raise ConversionError(f"{path.name}: corrupt safetensors header (length {n})")
                header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConversionError(f"{path.name}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ConversionError(f"{path.name}: corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype, shape, (begin, end) = e["dtype"], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{path.name}: corrupt header entry for {name}") from None
            if dtype not in DTYPES:
                raise ConversionError(f"{path.name}: tensor {name} has unsupported dtype {dtype}")
            if end - begin != math.prod(shape) * DTYPES[dtype][1] or begin < 0:
                raise ConversionError(f"{path.name}: tensor {name}: byte range does not match its shape")
            if self.data_start + end > size:
                raise ConversionError(f"{path.name}: truncated file: tensor {name} ends at byte "
                                      f"{self.data_start + end}, file has {size}")
            self.entries[name] = (dtype, shape, begin, end)
        self.bytes_read = 0

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def read_raw(self, name: str, index: int | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The stored values, or the slice [index], or rows [r0, r1) along the first axis, reading only
        those bytes; bfloat16 comes back as its uint16 bits."""
        dtype, shape, begin, end = self.entries[name]
        np_dtype, size = DTYPES[dtype]
        if index is not None:
            rows = (index, index + 1)
        if rows is not None:
            r0, r1 = rows
            if not 0 <= r0 <= r1 <= (shape[0] if shape else 0):
                raise ConversionError(f"{self.path.name}: rows {r0}..{r1} of tensor {name} {list(shape)}")
            row = math.prod(shape[1:]) * size
            begin, end = begin + r0 * row, begin + r1 * row
            shape = shape[1:] if index is not None else (r1 - r0, *shape[1:])
        out = np.empty(end - begin, np.uint8)
        view, got = memoryview(out), 0
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.data_start + begin)
            while got < len(out):                 # one read returns at most about 2 GiB
                n = f.readinto(view[got:])
                if not n:
                    raise ConversionError(f"{self.path.name}: tensor {name} could not be read (file changed or "
                                          "truncated)")
                got += n
        self.bytes_read += got
        return out.view(np_dtype).reshape(shape)

    def read(self, name: str, index: int | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """The tensor (or its slice [index], or rows [r0, r1)) as float32."""
        raw = self.read_raw(name, index, rows)
        if self.entries[name][0] == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)
