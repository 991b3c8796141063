"""The expert cache's default budget: what the adapter and the machine can hold.

WebGPU does not tell how much memory an adapter has. A CPU adapter (lavapipe, SwiftShader) allocates
from host memory, so its budget is the host's available memory less what the engine needs besides the
experts (dense weights, KV cache, activations) and a margin. A GPU adapter is asked for every expert;
the expert cache allocates its slab bank by bank and stops where an allocation fails."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .resources import plan_bytes

MARGIN_MIN = 1 << 30          # left free for the process, the page cache of the shards and other programs


@dataclass
class Budget:
    bytes: int
    reason: str               # how it was chosen, for `webmoe info`, the load message and the docs


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def package_budget(plan: dict, cpu_adapter: bool, T: int, S: int) -> Budget:
    """The default budget for a package's plan run with chunks of T tokens and S positions: its
    resources give the experts' bytes and what the engine needs besides them."""
    r = plan["resources"]
    experts = r["experts"]["count"] * r["experts"]["expert_bytes"]
    return default_budget(cpu_adapter, experts, r["dense_bytes"] + plan_bytes(plan, T, S)["buffers"])


def default_budget(cpu_adapter: bool, expert_total: int, reserved: int) -> Budget:
    """expert_total: bytes of every routed expert; reserved: what the engine allocates besides them."""
    if not cpu_adapter:
        return Budget(expert_total, f"every expert ({gib(expert_total)}) requested: WebGPU does not report GPU "
                                    "memory, so the slab grows bank by bank until an allocation fails")
    available = host_available_bytes()
    if available is None:
        return Budget(expert_total, f"every expert ({gib(expert_total)}): host memory unknown")
    margin = max(MARGIN_MIN, available // 8)
    room = max(0, available - reserved - margin)
    what = (f"host memory (CPU adapter): {gib(available)} available less {gib(reserved)} for dense weights "
            f"and buffers and a {gib(margin)} margin leaves {gib(room)}")
    if expert_total <= room:
        return Budget(expert_total, f"every expert ({gib(expert_total)}) fits; {what}")
    return Budget(room, f"{what}, less than the experts' {gib(expert_total)}: experts are paged")
