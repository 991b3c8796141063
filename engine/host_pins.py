"""Hot experts pinned in host memory: their bytes, copied once from the verified shards into one buffer
that is locked with mlock(2) where the system permits, so that paging them into GPU slots never waits on
the disk (or on the page cache being evicted). Where locking is refused, the experts stay in the buffer
and `message` says why and what to change.

hot_experts() chooses them from the package's routing statistics (`webmoe analyze --into-package`) by the
rule the browser's hotShards (web/loader.js) uses for what to download first."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

import numpy as np


def hot_experts(manifest: dict, share: float) -> list[tuple[int, int]]:
    """Per MoE layer, the fewest most-used experts whose routed tokens reach `share` of the layer's (ties to
    the lower expert number); most used first overall. [] without routing statistics."""
    usage = (manifest.get("routing_stats") or {}).get("usage")
    if not usage or share <= 0:
        return []
    out = []
    for layer, counts in usage.items():
        total = sum(counts)
        covered = 0
        for e in sorted(range(len(counts)), key=lambda e: (-counts[e], e)):
            if counts[e] == 0 or covered >= share * total:
                break
            covered += counts[e]
            out.append((counts[e] / total, int(layer), e))
    return [(layer, e) for _, layer, e in sorted(out, key=lambda x: -x[0])]


def _mlock(buffer: np.ndarray) -> tuple[bool, str]:
    if buffer.nbytes == 0:
        return True, "nothing to lock"
    name = ctypes.util.find_library("c")
    if os.name != "posix" or name is None:
        return False, "mlock is not available on this platform: the pinned experts stay in memory, unlocked"
    libc = ctypes.CDLL(name, use_errno=True)
    if libc.mlock(ctypes.c_void_p(buffer.ctypes.data), ctypes.c_size_t(buffer.nbytes)) == 0:
        return True, f"{buffer.nbytes / 2**20:.1f} MiB locked in memory"
    import resource             # POSIX only
    err = ctypes.get_errno()
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft / 2**20:.1f} MiB"
    why = {errno.ENOMEM: f"RLIMIT_MEMLOCK is {limit}", errno.EPERM: "the process may not lock memory"}.get(
        err, os.strerror(err))
    return False, (f"mlock refused {buffer.nbytes / 2**20:.1f} MiB ({why}): the pinned experts stay in memory but "
                   "the system may page them out; raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd, or "
                   "CAP_IPC_LOCK) to lock them")


class HostPins:
    def __init__(self, package, keys: list[tuple[int, int]]):
        self.offsets: dict[tuple[int, int], tuple[int, int]] = {}
        sizes = [(key, package.manifest["experts"][f"{key[0]}_{key[1]}"]["size"]) for key in keys]
        self.buffer = np.empty(sum(size for _, size in sizes), np.uint8)
        at = 0
        for key, size in sizes:
            self.buffer[at:at + size] = np.frombuffer(package.expert_bytes(*key), np.uint8)   # verified on read
            self.offsets[key] = (at, size)
            at += size
        self.locked, self.message = _mlock(self.buffer)
        self.hits = 0

    def get(self, key: tuple[int, int]) -> memoryview | None:
        where = self.offsets.get(key)
        if where is None:
            return None
        self.hits += 1
        return memoryview(self.buffer)[where[0]:where[0] + where[1]]

    def report(self) -> dict:
        return {"experts": len(self.offsets), "bytes": int(self.buffer.nbytes), "locked": self.locked,
                "message": self.message, "hits": self.hits}
