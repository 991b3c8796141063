"""Opens an RDRR package directory: reads its manifest strictly (format/manifest.py: version, its own
sha256, schema, cross-references) and serves tensor and expert bytes from the shards, checked against
their sha256 every time they are read from disk. Only regular files are opened, and no read is larger
than the manifest says the file is."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from webmoe.format.errors import PackageError
from webmoe.format.hub import HubError, hub_uri, snapshot
from webmoe.format.manifest import FORMAT_VERSION, MAX_MANIFEST_BYTES, read_manifest

__all__ = ["Package", "PackageError", "FORMAT_VERSION", "read_regular_file"]


def read_regular_file(path: Path, size: int, what: str) -> bytearray:
    """The `size` bytes of a regular file that must have exactly that size (never a FIFO or device), read
    into one buffer (no second copy: a full-size model's shards are read once each, gigabytes in all)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise PackageError(f"{what} cannot be opened: {e.strerror}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PackageError(f"{what} is not a regular file")
        if st.st_size != size:
            raise PackageError(f"{what} has {st.st_size} bytes, the manifest says {size}: the package is "
                               "truncated or corrupt")
        data = bytearray(size)
        view, got = memoryview(data), 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise PackageError(f"{what} changed while it was read")
            got += n
    return data


class Package:
    def __init__(self, path, digest: str | None = None):
        """path: the package's folder or manifest, or a Hub repository holding a package,
        hf://ORG/REPO[@REVISION] (format/hub.py: downloaded into the Hub cache). `digest`: the sha256 the
        package's manifest must have (what `webmoe info` prints), to pin a version."""
        try:
            hub = hub_uri(path)
            if hub is not None:
                path = snapshot(*hub)
        except HubError as e:
            raise PackageError(str(e)) from None
        self.dir = Path(path)
        mpath = self.dir / "manifest.json" if self.dir.is_dir() else self.dir
        if mpath.name == "manifest.json" and mpath.parent != self.dir:
            self.dir = mpath.parent
        try:
            size = mpath.stat().st_size
        except OSError:
            raise PackageError(f"no RDRR package at {path} (manifest.json not found)") from None
        if size > MAX_MANIFEST_BYTES:
            raise PackageError(f"manifest.json is {size} bytes, more than the {MAX_MANIFEST_BYTES} accepted")
        raw = bytes(read_regular_file(mpath, size, "manifest.json"))
        self.manifest = read_manifest(raw, digest)
        self.digest = self.manifest["manifest_sha256"]
        self.shards = {s["file"]: s for s in self.manifest["shards"]}
        for s in self.manifest["shards"]:
            p = self.dir / s["file"]
            if not p.is_file():
                raise PackageError(f"shard {s['file']} is missing from {self.dir}")
            if p.stat().st_size != s["size"]:
                raise PackageError(f"shard {s['file']} has {p.stat().st_size} bytes, the manifest says "
                                   f"{s['size']}: the package is truncated or corrupt")
        self._last: tuple[str, bytearray] | None = None      # the shard read last, verified

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def moe(self) -> dict:
        return self.manifest["moe"]

    def shard(self, name: str) -> memoryview:
        """The shard's bytes, read from disk and checked against its sha256 on every read; the shard read
        last is kept (verified) for the tensors that follow it in the same dense shard."""
        if self._last is None or self._last[0] != name:
            entry = self.shards[name]
            data = read_regular_file(self.dir / name, entry["size"], f"shard {name}")
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise PackageError(f"shard {name} is corrupt (sha256 mismatch); convert or download it again")
            self._last = (name, data)
        return memoryview(self._last[1]).toreadonly()

    def tensor_bytes(self, name: str) -> memoryview:
        t = self.manifest["tensors"][name]
        return self.shard(t["shard"])[t["offset"]:t["offset"] + t["size"]]

    def expert_bytes(self, layer: int, expert: int) -> memoryview:
        e = self.manifest["experts"].get(f"{layer}_{expert}")
        if e is None:
            raise PackageError(f"expert {layer}_{expert} is not in the manifest")
        return self.shard(e["shard"])[:e["size"]]

    def close(self) -> None:
        self._last = None
