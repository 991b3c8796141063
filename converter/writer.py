"""Writes an RDRR package atomically: everything goes to a hidden temporary directory beside OUT_DIR,
which is renamed into place only once the manifest is complete. A failed conversion removes it."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from webmoe.engine.manifest import FORMAT_VERSION, seal_manifest

from .errors import ConversionError

ALIGN = 256                      # byte alignment of every tensor in a shard (GPU copy offsets)
DENSE_SHARD_BYTES = 64 << 20     # dense shards are cut at about this size


def encode(a: np.ndarray, dtype: str, name: str = "a weight") -> bytes:
    """Little-endian bytes as the kernels read them (f16 padded to whole 32-bit words). NaN and infinite
    weights are refused: a package never runs with them."""
    if not np.isfinite(a).all():
        raise ConversionError(f"{name} holds NaN or infinite values; the checkpoint is corrupt")
    if dtype == "f16":
        h = np.ascontiguousarray(a, dtype="<f2")
        if not np.isfinite(h).all():
            raise ConversionError(f"{name} overflows float16; convert with --dtype f32")
        raw = h.tobytes()
    elif dtype == "f32":
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
    else:
        raise ValueError(dtype)
    return raw + b"\0" * (-len(raw) % 4)


def encoded_size(shape, dtype: str) -> int:
    """len(encode(a, dtype)) for an array of this shape, without making one."""
    n = math.prod(shape)
    return -(-n // 2) * 4 if dtype == "f16" else 4 * n


def pad(n: int) -> int:
    return -n % ALIGN


def _slot_layout(shapes: dict[str, tuple[int, ...]], dtype: str) -> dict:
    elem = 2 if dtype == "f16" else 4
    layout, off = {}, 0
    for role, shape in shapes.items():
        part_dtype = dtype if len(shape) == 2 else "f32"
        size = encoded_size(shape, part_dtype)
        layout[role] = {"offset": off, "size": size, "shape": list(shape), "dtype": part_dtype,
                        "elem_offset": off // elem, "word_offset": off // 4}
        off += size + pad(size)
    layout["slot_bytes"] = off
    layout["slot_elems"] = off // elem
    layout["dtype"] = dtype
    return layout


def piece_shapes(shapes: dict[str, tuple[int, ...]], rows: int) -> dict[str, tuple[int, ...]]:
    """The parts of one piece holding `rows` rows of the intermediate dimension: gate, up (and their
    biases) by rows, down by columns; down's bias is whole in every piece (zero after the first)."""
    out = {}
    for role, shape in shapes.items():
        if role == "down":
            out[role] = (shape[0], rows)
        elif role == "down_bias":
            out[role] = shape
        else:
            out[role] = (rows, *shape[1:])
    return out


def expert_layout(shapes: dict[str, tuple[int, ...]], dtype: str, max_binding: int = 128 << 20) -> dict:
    """Byte layout of one expert's slot: each part aligned to ALIGN. Matrices (2-D) are stored in `dtype`
    and addressed by element offset; 1-D parts (biases) stay f32 and are addressed by 32-bit word offset.
    An expert whose slot would exceed max_binding is cut into `pieces` along its intermediate dimension
    (`piece_rows` rows each, the last maybe fewer), each piece a slot of this layout; its shard holds the
    pieces one after another."""
    I = shapes["gate"][0]
    rows = I
    while True:
        layout = _slot_layout(piece_shapes(shapes, rows), dtype)
        if layout["slot_bytes"] <= max_binding:
            break
        if rows == 1:
            raise ConversionError(f"one row of an expert exceeds a {max_binding}-byte binding")
        rows = -(-I // (-(-I // rows) + 1))          # the next larger number of pieces
    layout["pieces"] = -(-I // rows)
    layout["piece_rows"] = rows
    layout["expert_bytes"] = layout["pieces"] * layout["slot_bytes"]
    return layout


def expert_pieces(parts: dict[str, np.ndarray], layout: dict) -> list[dict[str, np.ndarray]]:
    """An expert's parts {gate [I, H], up, down [H, I], biases} as its layout's pieces."""
    rows, out = layout["piece_rows"], []
    for p in range(layout["pieces"]):
        r0, r1 = p * rows, (p + 1) * rows
        piece = {}
        for role, a in parts.items():
            if role == "down":
                piece[role] = a[:, r0:r1]
            elif role == "down_bias":
                piece[role] = a if p == 0 else np.zeros_like(a)
            else:
                piece[role] = a[r0:r1]
        out.append(piece)
    return out


class _Shard:
    def __init__(self, path: Path):
        self.path, self.size, self.sha = path, 0, hashlib.sha256()
        self.file = open(path, "wb")

    def write(self, data: bytes) -> int:
        """Appends data at the next ALIGN boundary; returns its offset."""
        self.fill_to(self.size + pad(self.size))
        return self.append(data)

    def append(self, data: bytes) -> int:
        """Appends data right after the previous write (the next block of one tensor); returns its offset."""
        off = self.size
        self.file.write(data)
        self.sha.update(data)
        self.size += len(data)
        return off

    def fill_to(self, offset: int) -> None:
        """Zeros up to byte `offset` (alignment, and the gaps a piece smaller than its slot leaves)."""
        if offset > self.size:
            self.append(b"\0" * (offset - self.size))

    def close(self) -> dict:
        self.file.close()
        return {"file": self.path.name, "size": self.size, "sha256": self.sha.hexdigest()}


def is_package(path: Path) -> bool:
    """A directory holding an RDRR manifest.json: what --force may replace."""
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return path.is_dir() and not path.is_symlink() and isinstance(m, dict) and m.get("format") == "rdrr"


def check_target(out: Path, force: bool, source: Path | None) -> None:
    """OUT may be replaced only with --force, only if it is a webmoe package, and never if it is the
    source checkpoint or holds it."""
    out_r = out.resolve()
    if source is not None:
        src = Path(source).resolve()
        if out_r == src or out_r in src.parents:
            raise ConversionError(f"{out} is the checkpoint or holds it; write the package somewhere else")
    if out.exists() or out.is_symlink():
        if not force:
            raise ConversionError(f"{out} already exists (use --force to replace it)")
        if not is_package(out):
            raise ConversionError(f"{out} exists and is not a webmoe package; --force replaces only a package "
                                  "(remove it yourself if that is what you want)")


def remove_abandoned(out: Path) -> None:
    """Removes hidden partial packages beside OUT left by conversions that were killed (their process
    is gone)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            continue


class PackageWriter:
    def __init__(self, out_dir: Path, force: bool = False, source: Path | None = None):
        """source: the checkpoint being converted, which OUT must not be or hold."""
        self.out = Path(out_dir)
        check_target(self.out, force, source)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(self.out)
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.tensors: dict[str, dict] = {}
        self.experts: dict[str, dict] = {}
        self.shards: list[dict] = []
        self._dense: _Shard | None = None
        self.bytes_written = 0

    def add_dense(self, name: str, array: np.ndarray, dtype: str) -> None:
        self.add_dense_blocks(name, array.shape, dtype, [array])

    def add_dense_blocks(self, name: str, shape: tuple[int, ...], dtype: str, blocks) -> None:
        """A tensor written from consecutive row blocks (float32 arrays), never held whole."""
        size = encoded_size(shape, dtype)
        if self._dense is not None and self._dense.size + pad(self._dense.size) + size > DENSE_SHARD_BYTES:
            self._close_dense()
        if self._dense is None:
            self._dense = _Shard(self.tmp / f"dense-{sum(s['kind'] == 'dense' for s in self.shards):05d}.bin")
        off = self._dense.write(b"")                 # aligned; the blocks follow one another
        for block in blocks:
            self._dense.append(encode(block, dtype, f"tensor {name}"))
        if self._dense.size - off != size:
            raise ConversionError(f"tensor {name}: the blocks read do not make its shape {list(shape)}")
        self.tensors[name] = {"shard": self._dense.path.name, "offset": off, "size": size, "shape": list(shape),
                              "dtype": dtype}
        self.bytes_written += size

    def add_expert(self, layer: int, expert: int, parts: dict[str, np.ndarray], layout: dict) -> None:
        key = f"{layer}_{expert}"
        shard = _Shard(self.tmp / f"expert-L{layer:03d}-E{expert:03d}.bin")
        for p, piece in enumerate(expert_pieces(parts, layout)):
            start = p * layout["slot_bytes"]
            for role, part in piece.items():
                shard.fill_to(start + layout[role]["offset"])
                shard.write(encode(part, layout[role]["dtype"], f"expert {key} {role}"))
            shard.fill_to(start + layout["slot_bytes"])
        self.shards.append({**shard.close(), "kind": "expert", "expert": key})
        self.experts[key] = {"shard": shard.path.name, "size": layout["expert_bytes"]}
        self.bytes_written += layout["expert_bytes"]

    def _close_dense(self) -> None:
        self.shards.append({**self._dense.close(), "kind": "dense"})
        self._dense = None

    def copy_file(self, src: Path, name: str) -> None:
        """A tokenizer file, listed among the shards (kind "tokenizer") so that its sha256 covers it too."""
        shutil.copyfile(src, self.tmp / name)
        data = (self.tmp / name).read_bytes()
        self.shards.append({"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                            "kind": "tokenizer"})

    def finish(self, manifest: dict) -> Path:
        if self._dense is not None:
            self._close_dense()
        manifest = {**manifest, "format": "rdrr", "format_version": FORMAT_VERSION, "tensors": self.tensors,
                    "experts": self.experts, "shards": self.shards}
        with open(self.tmp / "manifest.json", "wb") as f:
            f.write(seal_manifest(manifest))
            f.flush()
            os.fsync(f.fileno())
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        if self._dense is not None:
            self._dense.file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
