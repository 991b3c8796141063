"""GPU residency of routed experts: resident experts live in the slots of a slab buffer and a slot table
[num_layers, E] maps (layer, expert) -> slot, which the grouped expert kernels read. A slot's layout
equals the expert's shard, so loading an expert is one copy of its (memory-mapped) shard.

With a budget that holds every expert, all are loaded once and routing stays on the GPU: a forward pass
reads nothing back. With a smaller budget the engine reads back each MoE layer's chosen experts and
asks `batches()` for them: experts already resident are hits, the others are uploaded into free slots
or slots taken from the least recently used experts not in the batch and not pinned. When a layer needs
more experts than there are slots, the experts run in several batches; each pair's output is computed
in exactly one of them, so the numerics do not depend on the budget."""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import wgpu

from .device import Gpu
from .package import Package
from .errors import ExpertCacheError

STORAGE = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST
NO_SLOT = 0xFFFFFFFF          # the kernels skip experts whose slot lies outside the bound slab


@dataclass
class LayerStats:
    lookups: int = 0          # distinct experts a forward pass needed in this layer, summed over passes
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_uploaded: int = 0   # (misses + prefetched) x slot bytes
    wait_s: float = 0.0       # time the forward pass waited for routing read-back and uploads
    prefetched: int = 0       # experts uploaded ahead of need
    predicted: int = 0        # experts the predictor named for this layer
    predicted_used: int = 0   # ... that the layer then needed
    needed_after_prediction: int = 0

    FIELDS = ("lookups", "hits", "misses", "evictions", "bytes_uploaded", "wait_s", "prefetched", "predicted",
              "predicted_used", "needed_after_prediction")

    def as_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.FIELDS}
        d["wait_s"] = round(self.wait_s, 6)
        d["hit_rate"] = self.hits / self.lookups if self.lookups else None
        d["precision"] = self.predicted_used / self.predicted if self.predicted else None
        d["recall"] = self.predicted_used / self.needed_after_prediction if self.needed_after_prediction else None
        return d


@dataclass
class Segment:
    """One MoE layer as the plan records it: the steps that read the expert slab (start .. stop) and the
    plan buffer holding that layer's chosen expert ids."""
    layer: int
    start: int
    stop: int
    topk_ids: str


def expert_segments(plan: dict) -> list[Segment]:
    return [Segment(r["layer"], r["experts"][0], r["experts"][1], r["topk_ids"]) for r in plan["moe_layers"]]


class ExpertCache:
    def __init__(self, gpu: Gpu, package: Package, budget_bytes: int | None = None, pinned=(),
                 observe: bool = False):
        """observe: read back routing even when every expert is resident, to record usage."""
        moe = package.moe
        self.package, self.device = package, gpu.device
        self.layout = moe["expert_layout"]
        self.num_experts = moe["num_experts"]
        self.moe_layers = list(moe["moe_layers"])
        self.slot_bytes = self.layout["slot_bytes"]
        total = len(self.moe_layers) * self.num_experts
        fit = gpu.max_binding // self.slot_bytes
        if budget_bytes is None:
            n_slots = min(total, fit)
        else:
            if budget_bytes < self.slot_bytes:
                raise ExpertCacheError(f"an expert cache of {budget_bytes / 2**20:.2f} MiB holds no expert; one "
                                       f"expert needs {self.slot_bytes / 2**20:.2f} MiB")
            n_slots = min(total, budget_bytes // self.slot_bytes, fit)
        self.n_slots = max(1, n_slots)
        self.paging = self.n_slots < total
        self.observe = observe
        self.pinned = {tuple(p) for p in pinned}
        bad = [p for p in self.pinned if p[0] not in self.moe_layers or not 0 <= p[1] < self.num_experts]
        if bad:
            raise ExpertCacheError(f"pinned experts {sorted(bad)} do not exist in this model")
        if len(self.pinned) >= self.n_slots and self.paging:
            raise ExpertCacheError(f"{len(self.pinned)} pinned experts leave no free slot in a cache of {self.n_slots}")
        self.slab = self.device.create_buffer(size=self.n_slots * self.slot_bytes, usage=STORAGE, label="expert slab")
        self.table = np.full(package.config["num_layers"] * self.num_experts, NO_SLOT, np.uint32)   # [layers, E]
        self.slot_table = self.device.create_buffer(size=self.table.nbytes, usage=STORAGE, label="expert slots")
        self.resident: OrderedDict[tuple[int, int], int] = OrderedDict()   # LRU order, oldest first
        self.free = list(range(self.n_slots - 1, -1, -1))
        self.stats = {l: LayerStats() for l in self.moe_layers}
        E = self.num_experts
        self.usage = {l: np.zeros(E, np.int64) for l in self.moe_layers}                # tokens routed to e
        self.coactivation = {l: np.zeros((E, E), np.int64) for l in self.moe_layers}    # tokens routed to both
        self.in_use: set[tuple[int, int]] = set()
        self.predictions: dict[int, set[int]] = {}     # layer -> experts prefetched for its next pass
        startup = [(l, e) for l in self.moe_layers for e in range(self.num_experts)] if not self.paging \
            else sorted(self.pinned)
        for key in startup:
            self._upload(key, self.free.pop())
        self._write_table()

    @property
    def buffers(self) -> dict:
        return {"experts": self.slab, "expert_slots": self.slot_table}

    @property
    def variables(self) -> dict[str, int]:
        """Plan variables of the grouped expert kernels: the slot range the bound slab buffer holds."""
        return {"slot0": 0, "n_slots": self.n_slots}

    @property
    def reads_routing(self) -> bool:
        return self.paging or self.observe

    def record(self, layer: int, chosen: np.ndarray) -> None:
        """Routing of a forward pass: chosen [T, K] expert ids."""
        np.add.at(self.usage[layer], chosen.reshape(-1), 1)
        onehot = np.zeros((len(chosen), self.num_experts), np.int64)
        np.put_along_axis(onehot, chosen.astype(np.int64), 1, axis=1)
        self.coactivation[layer] += onehot.T @ onehot

    def batches(self, layer: int, experts):
        """Yields the needed experts of a layer in batches that are resident together, the slot table
        set to exactly that batch for the layer; the caller runs the layer's expert kernels per batch."""
        need = [int(e) for e in sorted(set(int(x) for x in experts))]
        st = self.stats[layer]
        st.lookups += len(need)
        predicted = self.predictions.pop(layer, None)
        if predicted is not None:
            st.predicted += len(predicted)
            st.predicted_used += len(predicted & set(need))
            st.needed_after_prediction += len(need)
        pending = sorted(need, key=lambda e: (layer, e) not in self.resident)     # resident first
        while pending:
            t0 = time.perf_counter()
            batch: list[int] = []
            self.in_use = set()
            for e in pending:
                key = (layer, e)
                if key in self.resident:
                    st.hits += 1
                    self.resident.move_to_end(key)
                else:
                    slot = self._take_slot()
                    if slot is None:
                        break
                    st.misses += 1
                    st.bytes_uploaded += self.slot_bytes
                    self._upload(key, slot)
                batch.append(e)
                self.in_use.add(key)
            pending = pending[len(batch):]
            row = self.table[layer * self.num_experts:(layer + 1) * self.num_experts]
            row[:] = NO_SLOT
            for e in batch:
                row[e] = self.resident[(layer, e)]
            self._write_table(layer)
            st.wait_s += time.perf_counter() - t0
            yield batch
        self.in_use = set()

    def prefetch(self, layer: int, experts) -> None:
        """Loads experts predicted for the layer's next pass into free or least recently used slots."""
        t0 = time.perf_counter()
        want = sorted(set(int(e) for e in experts))
        self.predictions[layer] = set(want)
        st = self.stats[layer]
        self.in_use = {(layer, e) for e in want}        # do not evict one prediction for another
        for e in want:
            key = (layer, e)
            if key in self.resident:
                self.resident.move_to_end(key)
                continue
            slot = self._take_slot()
            if slot is None:
                break
            self._upload(key, slot)
            st.prefetched += 1
            st.bytes_uploaded += self.slot_bytes
        self.in_use = set()
        st.wait_s += time.perf_counter() - t0

    def _take_slot(self) -> int | None:
        if self.free:
            return self.free.pop()
        for key in self.resident:                       # least recently used first
            if key not in self.in_use and key not in self.pinned:
                slot = self.resident.pop(key)
                self.table[key[0] * self.num_experts + key[1]] = NO_SLOT
                self.stats[key[0]].evictions += 1
                return slot
        return None

    def _upload(self, key: tuple[int, int], slot: int) -> None:
        self.device.queue.write_buffer(self.slab, slot * self.slot_bytes, self.package.expert_bytes(*key))
        self.resident[key] = slot
        self.table[key[0] * self.num_experts + key[1]] = slot

    def _write_table(self, layer: int | None = None) -> None:
        if layer is None:
            self.device.queue.write_buffer(self.slot_table, 0, self.table)
        else:
            start = layer * self.num_experts
            self.device.queue.write_buffer(self.slot_table, start * 4, self.table[start:start + self.num_experts])

    def report(self) -> dict:
        """Statistics per layer and in total (hits + misses = lookups; bytes_uploaded = misses x slot size),
        tokens routed to each expert per layer, and the in-memory shard cache (the browser's; natively the
        shards are memory-mapped, so it is None). The same shape as web/expert_cache.js's report()."""
        layers = {l: s.as_dict() for l, s in self.stats.items()}
        total = LayerStats()
        for s in self.stats.values():
            for f in LayerStats.FIELDS:
                setattr(total, f, getattr(total, f) + getattr(s, f))
        return {"slots": self.n_slots, "slot_bytes": self.slot_bytes, "paging": self.paging,
                "resident": len(self.resident), "layers": layers, "total": total.as_dict(),
                "usage": {l: u.tolist() for l, u in self.usage.items()}, "memory": None}
