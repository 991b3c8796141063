"""Writes an RDRR package atomically: everything goes to a hidden temporary directory beside OUT_DIR,
which is renamed into place only once the manifest is complete. A failed conversion removes it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from webmoe.format.errors import PackageError
from webmoe.format.expert_layout import pad
from webmoe.format.manifest import FORMAT_NAME, stamped, write_manifest
from webmoe.format.weight_formats import encoded_size, fmt

from .errors import ConversionError
from .quant import encode

DENSE_SHARD_BYTES = 64 << 20     # dense shards are cut at about this size


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


def expert_shard(parts: dict[str, np.ndarray], layout: dict, key: str) -> bytearray:
    """The bytes of an expert's shard: its pieces one after another, each part encoded at its layout
    offset, zeros between. A pure function of its arguments, so any process may compute it."""
    out = bytearray(layout["expert_bytes"])
    for p, piece in enumerate(expert_pieces(parts, layout)):
        start = p * layout["slot_bytes"]
        for role, part in piece.items():
            data = encode(part, layout[role]["dtype"], f"expert {key} {role}")
            at = start + layout[role]["offset"]
            out[at:at + len(data)] = data
    return out


def whole_blocks(arrays, block: int):
    """Flat float32 chunks of the arrays' elements in order, each a whole number of the format's blocks
    but the last, so that encoding them one by one writes the bytes of the whole."""
    carry = np.zeros(0, np.float32)
    for a in arrays:
        flat = np.concatenate([carry, np.asarray(a, np.float32).reshape(-1)]) if carry.size else \
            np.asarray(a, np.float32).reshape(-1)
        cut = flat.size // block * block
        if cut:
            yield flat[:cut]
        carry = flat[cut:]
    if carry.size:
        yield carry


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
    return path.is_dir() and not path.is_symlink() and isinstance(m, dict) and m.get("format") == FORMAT_NAME


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
        for chunk in whole_blocks(blocks, fmt(dtype).block):
            self._dense.append(encode(chunk, dtype, f"tensor {name}"))
        if self._dense.size - off != size:
            raise ConversionError(f"tensor {name}: the blocks read do not make its shape {list(shape)}")
        self.tensors[name] = {"shard": self._dense.path.name, "offset": off, "size": size, "shape": list(shape),
                              "dtype": dtype}
        self.bytes_written += size

    def add_expert(self, layer: int, expert: int, parts: dict[str, np.ndarray], layout: dict) -> None:
        self.add_expert_shard(layer, expert, expert_shard(parts, layout, f"{layer}_{expert}"), layout)

    def add_expert_shard(self, layer: int, expert: int, data: bytes, layout: dict) -> None:
        """An expert's shard as expert_shard() encoded it (here or in another process)."""
        key = f"{layer}_{expert}"
        if len(data) != layout["expert_bytes"]:
            raise ConversionError(f"expert {key}: {len(data)} bytes encoded, its layout has {layout['expert_bytes']}")
        shard = _Shard(self.tmp / f"expert-L{layer:03d}-E{expert:03d}.bin")
        shard.append(data)
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
        manifest = {**stamped(manifest), "tensors": self.tensors, "experts": self.experts,   # the key order of
                    "shards": self.shards}                                                # every package so far
        try:                       # what every loader checks, before the package appears: never one it refuses
            write_manifest(self.tmp / "manifest.json", manifest)
        except PackageError as e:
            raise ConversionError(f"the package's manifest would not load, so nothing was written ({e}); "
                                  "this is a converter bug, please report it") from None
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
