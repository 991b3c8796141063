"""GPU residency of routed experts: experts live in the slots of a slab buffer, and a slot table
[num_layers, E] maps (layer, expert) -> slot, which the grouped expert kernels read. Slot layout equals
the expert shard layout, so loading an expert is one copy of its shard.

Today every expert is resident (slot = its index in load order); the byte budget, eviction and
prefetch of ../shared/DESIGN.md build on this same slab and table."""
from __future__ import annotations

import numpy as np
import wgpu

from .device import Gpu
from .package import Package

STORAGE = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST


class ExpertCacheError(RuntimeError):
    pass


class ExpertCache:
    def __init__(self, gpu: Gpu, package: Package):
        moe = package.moe
        self.layout = moe["expert_layout"]
        self.num_experts = moe["num_experts"]
        self.moe_layers = moe["moe_layers"]
        self.slot_bytes = self.layout["slot_bytes"]
        self.n_slots = len(self.moe_layers) * self.num_experts
        slab_bytes = self.n_slots * self.slot_bytes
        if slab_bytes > gpu.max_binding:
            raise ExpertCacheError(
                f"the routed experts need {slab_bytes / 2**20:.1f} MiB, above this adapter's "
                f"{gpu.max_binding / 2**20:.0f} MiB storage binding limit; expert paging with a byte "
                "budget is not built yet")
        device = gpu.device
        self.slab = device.create_buffer(size=max(slab_bytes, 4), usage=STORAGE, label="expert slab")
        slots = np.zeros(package.config["num_layers"] * self.num_experts, np.uint32)   # [layers, E]
        slot = 0
        for layer in self.moe_layers:
            for e in range(self.num_experts):
                device.queue.write_buffer(self.slab, slot * self.slot_bytes, package.expert_bytes(layer, e))
                slots[layer * self.num_experts + e] = slot
                slot += 1
        self.slot_table = device.create_buffer(size=slots.nbytes, usage=STORAGE, label="expert slots")
        device.queue.write_buffer(self.slot_table, 0, slots)

    @property
    def buffers(self) -> dict:
        return {"experts": self.slab, "expert_slots": self.slot_table}

    @property
    def variables(self) -> dict[str, int]:
        """Plan variables of the grouped expert kernels: the slot range the bound slab buffer holds."""
        return {"slot0": 0, "n_slots": self.n_slots}
