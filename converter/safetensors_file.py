"""Lazy, validated reading of .safetensors files through numpy memory maps.

The `safetensors` package's numpy API cannot return bfloat16 (numpy has no such dtype) and its torch API
would make torch a converter dependency, so the converter reads the (simple, documented) format itself:
an 8-byte little-endian header length, a JSON header of {name: {dtype, shape, data_offsets}}, then the
data. The header is held to the reference library's rules before any tensor is read: known dtypes,
integer shapes and offsets, byte ranges that match the shapes and tile the data exactly (no overlap, no
gap, nothing after the last tensor), so a truncated or corrupt file is a clear error. Only regular files
are opened (a FIFO would block). Tensors, row ranges and expert slices are read with plain positioned reads (no
memory map), so reading a multi-GiB checkpoint holds only what was asked for in memory.
"""
from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path

import numpy as np

from webmoe.format.strict_json import parse_json

from .errors import ConversionError

# safetensors dtype -> (numpy storage dtype, element bytes). BF16 is stored as uint16 and widened on read.
DTYPES = {
    "F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2),
    "F64": (np.float64, 8), "I64": (np.int64, 8), "I32": (np.int32, 4), "I16": (np.int16, 2),
    "I8": (np.int8, 1), "U8": (np.uint8, 1), "BOOL": (np.bool_, 1),
}
FLOATS = ("F32", "F16", "BF16", "F64")          # weights must be one of these; integers are raw data (MXFP4)
_MAX_HEADER = 100 * 1024 * 1024


def _is_uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def open_regular(path: Path, what: str):
    """A binary file object of a regular file, opened without blocking (never a FIFO or a device)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ConversionError(f"{what}: cannot open ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConversionError(f"{what}: not a regular file")
    return os.fdopen(fd, "rb", buffering=0)


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        with open_regular(path, path.name) as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path.name}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise ConversionError(f"{path.name}: corrupt safetensors header (length {n})")
            raw = f.read(n)
        header = parse_json(raw, f"{path.name}: the safetensors header", ConversionError, _MAX_HEADER)
        if not isinstance(header, dict):
            raise ConversionError(f"{path.name}: corrupt safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None)
        if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise ConversionError(f"{path.name}: corrupt safetensors header (__metadata__ is not text to text)")
        self.data_start = 8 + n
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            self.entries[name] = self._entry(name, e)
        self._check_tiling(size - self.data_start)
        self.bytes_read = 0

    def _entry(self, name: str, e) -> tuple[str, tuple[int, ...], int, int]:
        where = f"{self.path.name}: tensor {name[:200]}"
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}):
            raise ConversionError(f"{where}: corrupt header entry (needs exactly dtype, shape, data_offsets)")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ConversionError(f"{where} has unsupported dtype {str(dtype)[:20]}")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(map(_is_uint, shape))):
            raise ConversionError(f"{where}: the shape is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_uint, offsets))):
            raise ConversionError(f"{where}: data_offsets are not two non-negative integers")
        begin, end = offsets
        if end < begin or end - begin != math.prod(shape) * DTYPES[dtype][1]:
            raise ConversionError(f"{where}: byte range does not match its shape")
        return dtype, tuple(shape), begin, end

    def _check_tiling(self, data_size: int) -> None:
        """The byte ranges cover the data exactly once, in some order, as the reference library requires."""
        at = 0
        for name, (_, _, begin, end) in sorted(self.entries.items(), key=lambda kv: (kv[1][2], kv[1][3])):
            if begin != at:
                what = "overlaps the previous tensor" if begin < at else f"leaves a gap of {begin - at} bytes"
                raise ConversionError(f"{self.path.name}: tensor {name[:200]} {what}")
            at = end
        if at > data_size:
            raise ConversionError(f"{self.path.name}: truncated file: the tensors end at byte {self.data_start + at}, "
                                  f"the file has {self.data_start + data_size}")
        if at < data_size:
            raise ConversionError(f"{self.path.name}: {data_size - at} bytes after the last tensor")

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
        with open_regular(self.path, self.path.name) as f:
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
        """The tensor (or its slice [index], or rows [r0, r1)) as float32; weights must be stored as floats."""
        if self.entries[name][0] not in FLOATS:
            raise ConversionError(f"{self.path.name}: tensor {name} is stored as {self.entries[name][0]}; "
                                  "weights must be floating point")
        raw = self.read_raw(name, index, rows)
        if self.entries[name][0] == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)
