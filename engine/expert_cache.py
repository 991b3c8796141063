"""GPU residency of routed experts: resident experts live in the slots of a slab and a slot table
[num_layers, E, pieces] maps (layer, expert, piece) -> slot, which the grouped expert kernels read. A
slot's layout equals one piece of the expert's shard (most experts are one piece; see
format/expert_layout.py), so loading an expert is one copy per piece of its (memory-mapped) shard.
The slab is as many buffers (banks) as the budget needs, each at most one storage binding; the expert
kernels run once per bank that holds an expert the layer needs.

With a budget that holds every expert, all are loaded once and routing stays on the GPU: a forward pass
reads nothing back. With a smaller budget the engine reads back each MoE layer's chosen experts and
asks `batches()` for them: experts already resident are hits, the others are uploaded into free slots
or slots taken from the least recently used experts not in the batch and not pinned. When a layer needs
more experts than there are slots, the experts run in several batches; each pair's output is computed
in exactly one of them, so the numerics do not depend on the budget."""
from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import wgpu

from .device import Gpu
from .executor import padded
from .errors import ExpertCacheError
from .host_pins import HostPins
from .memory import Budget, gib
from .package import Package

STORAGE = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST
BANK_INFO = wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST
MAX_ELEMENTS = 2**32 - 1     # of one bank, as the kernels index it
NO_SLOT = 0xFFFFFFFF          # the kernels skip experts whose slot lies outside the bound bank


@dataclass
class LayerStats:
    lookups: int = 0          # distinct experts a forward pass needed in this layer, summed over passes
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_uploaded: int = 0   # (misses + prefetched) x expert bytes
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
    def __init__(self, gpu: Gpu, package: Package, budget: Budget, pinned=(), observe: bool = False,
                 host_pins: HostPins | None = None):
        """budget: bytes for routed experts and how they were chosen (engine/memory.py). observe: read
        back routing even when every expert is resident, to record usage. host_pins: experts held in host
        memory, read from there instead of their shards when paged in."""
        self.host_pins = host_pins
        moe = package.moe
        self.package, self.gpu, self.device = package, gpu, gpu.device
        self.layout = moe["expert_layout"]
        self.num_experts = moe["num_experts"]
        self.moe_layers = list(moe["moe_layers"])
        self.slot_bytes = self.layout["slot_bytes"]
        self.pieces = self.layout["pieces"]
        self.expert_bytes = self.slot_bytes * self.pieces
        total = len(self.moe_layers) * self.num_experts
        if budget.bytes < self.expert_bytes:
            raise ExpertCacheError(f"an expert cache of {budget.bytes / 2**20:.2f} MiB holds no expert; one "
                                   f"expert needs {self.expert_bytes / 2**20:.2f} MiB")
        # a bank is one binding; the kernels address its elements with u32 (4-bit formats hold more
        # elements than bytes)
        self.slots_per_bank = max(1, min(min(gpu.max_binding, gpu.max_buffer) // self.slot_bytes,
                                         MAX_ELEMENTS // self.layout["slot_elems"]))
        self.banks: list = []            # slab buffers, bank b holding slots bank_start[b] ..
        self.bank_start: list[int] = []
        self.bank_info: list = []        # per bank a uniform vec4<u32>: first slot, slots, first expert, experts
        wanted = min(total, budget.bytes // self.expert_bytes) * self.pieces
        capacity = self._allocate(wanted, per_layer=wanted == total * self.pieces) // self.pieces
        self.budget = budget
        if self.n_slots < wanted:
            self.budget = Budget(self.n_slots * self.slot_bytes, f"{budget.reason}; the adapter allocated only "
                                                                 f"{gib(self.n_slots * self.slot_bytes)}")
        self.capacity = capacity         # experts that fit at once
        self.paging = capacity < total
        self.observe = observe
        self.pinned = {tuple(p) for p in pinned}
        bad = [p for p in self.pinned if p[0] not in self.moe_layers or not 0 <= p[1] < self.num_experts]
        if bad:
            raise ExpertCacheError(f"pinned experts {sorted(bad)} do not exist in this model")
        if len(self.pinned) >= capacity and self.paging:
            raise ExpertCacheError(f"{len(self.pinned)} pinned experts leave no free slot in a cache of {capacity}")
        self.table = np.full(package.config["num_layers"] * self.num_experts * self.pieces, NO_SLOT, np.uint32)
        self.slot_table = self.device.create_buffer(size=self.table.nbytes, usage=STORAGE, label="expert slots")
        self.resident: OrderedDict[tuple[int, int], list[int]] = OrderedDict()   # LRU order, oldest first
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
            self._upload(key, self._take_slots())
        self._write_table()
        gpu.settle()
        # banks each layer's resident experts occupy (while nothing is paged, they never change)
        self.layer_banks = {l: self.banks_of(l, range(E)) for l in self.moe_layers}

    def _allocate(self, n_slots: int, per_layer: bool) -> int:
        """Creates banks for n_slots slots, stopping early if the adapter refuses one; returns the slots.
        per_layer (every expert resident): each bank holds slots of one layer only, experts in order, so
        its window of experts is narrow; otherwise every bank may hold any expert of any layer."""
        E, P = self.num_experts, self.pieces
        sizes = []                      # (slots, first expert, experts) per bank
        if per_layer:
            for _ in self.moe_layers:
                for s0 in range(0, E * P, self.slots_per_bank):
                    n = min(self.slots_per_bank, E * P - s0)
                    sizes.append((n, s0 // P, (s0 + n - 1) // P - s0 // P + 1))
        else:
            sizes = [(min(self.slots_per_bank, n_slots - s0), 0, E) for s0 in range(0, n_slots, self.slots_per_bank)]
        self.n_slots, self.bank_env = 0, []
        for n, e0, n_e in sizes:
            try:
                bank = self.device.create_buffer(size=padded(n * self.slot_bytes), usage=STORAGE,
                                                 label=f"expert slab bank {len(self.banks)}")
            except Exception as e:          # out of memory: page with what was allocated
                if self.n_slots < P:
                    raise ExpertCacheError(f"the adapter cannot allocate one expert ({gib(self.expert_bytes)}): "
                                           f"{e}") from None
                for b in range(len(self.banks)):        # paging: any bank may hold any expert
                    self._set_window(b, 0, E)
                break
            self.banks.append(bank)
            self.bank_start.append(self.n_slots)
            self.bank_info.append(self.device.create_buffer(size=16, usage=BANK_INFO,
                                                            label=f"expert bank {len(self.banks) - 1} range"))
            self.bank_env.append({})
            self._set_window(len(self.banks) - 1, e0, n_e)
            self.n_slots += n
        return self.n_slots

    def _set_window(self, b: int, e0: int, n_e: int) -> None:
        """Bank b's uniform: its first slot, slot count, first expert and number of experts it may hold."""
        n = self.banks[b].size // self.slot_bytes     # a bank is padded to 16 bytes
        self.device.queue.write_buffer(self.bank_info[b], 0, np.array([self.bank_start[b], n, e0, n_e], np.uint32))
        self.bank_env[b] = {"bank_experts": n_e}

    @property
    def buffers(self) -> dict:
        return {"experts": self.banks, "expert_bank": self.bank_info, "expert_slots": self.slot_table}

    def banks_of(self, layer: int, experts) -> list[int]:
        """The banks holding the resident pieces of these experts of a layer."""
        return sorted({self._bank_of(s)[0] for e in experts for s in self.resident.get((layer, int(e)), ())})

    def _bank_of(self, slot: int) -> tuple[int, int]:
        """-> (bank, slot index within it)."""
        b = bisect.bisect_right(self.bank_start, slot) - 1
        return b, slot - self.bank_start[b]

    @property
    def reads_routing(self) -> bool:
        return self.paging or self.observe

    def describe(self) -> str:
        total = len(self.moe_layers) * self.num_experts
        where = f"{len(self.banks)} bank{'s' if len(self.banks) > 1 else ''}"
        if self.paging:
            return (f"{self.capacity} of {total} experts resident at once ({gib(self.capacity * self.expert_bytes)} "
                    f"in {where}), the rest paged; budget: {self.budget.reason}")
        return f"all {total} experts resident ({gib(total * self.expert_bytes)} in {where}); budget: {self.budget.reason}"

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
                    slots = self._take_slots()
                    if slots is None:
                        break
                    st.misses += 1
                    st.bytes_uploaded += self.expert_bytes
                    self._upload(key, slots)
                batch.append(e)
                self.in_use.add(key)
            pending = pending[len(batch):]
            P = self.pieces
            row = self.table[layer * self.num_experts * P:(layer + 1) * self.num_experts * P]
            row[:] = NO_SLOT
            for e in batch:
                row[e * P:(e + 1) * P] = self.resident[(layer, e)]
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
            slots = self._take_slots()
            if slots is None:
                break
            self._upload(key, slots)
            st.prefetched += 1
            st.bytes_uploaded += self.expert_bytes
        self.in_use = set()
        st.wait_s += time.perf_counter() - t0

    def _take_slots(self) -> list[int] | None:
        """Slots for one expert's pieces: free ones, else those of the least recently used experts not in
        the running batch and not pinned; None if there are not enough."""
        while len(self.free) < self.pieces:
            victim = next((k for k in self.resident if k not in self.in_use and k not in self.pinned), None)
            if victim is None:
                return None
            self.free.extend(self.resident.pop(victim))
            start = (victim[0] * self.num_experts + victim[1]) * self.pieces
            self.table[start:start + self.pieces] = NO_SLOT
            self.stats[victim[0]].evictions += 1
        return [self.free.pop() for _ in range(self.pieces)]

    def _upload(self, key: tuple[int, int], slots: list[int]) -> None:
        data = self.host_pins.get(key) if self.host_pins else None
        if data is None:
            data = self.package.expert_bytes(*key)
        for piece, slot in enumerate(slots):
            bank, at = self._bank_of(slot)
            self.gpu.upload(self.banks[bank], at * self.slot_bytes,
                            data[piece * self.slot_bytes:(piece + 1) * self.slot_bytes])
        self.resident[key] = slots
        start = (key[0] * self.num_experts + key[1]) * self.pieces
        self.table[start:start + self.pieces] = slots

    def _write_table(self, layer: int | None = None) -> None:
        if layer is None:
            self.device.queue.write_buffer(self.slot_table, 0, self.table)
        else:
            n = self.num_experts * self.pieces
            self.device.queue.write_buffer(self.slot_table, layer * n * 4, self.table[layer * n:(layer + 1) * n])

    def report(self) -> dict:
        """Statistics per layer and in total (hits + misses = lookups; bytes_uploaded = misses x expert bytes),
        tokens routed to each expert per layer, the in-memory shard cache and the tiers below it, OPFS and
        the network (the browser's; natively the shards are memory-mapped local files, so both are None).
        The same shape as web/expert_cache.js's report()."""
        layers = {l: s.as_dict() for l, s in self.stats.items()}
        total = LayerStats()
        for s in self.stats.values():
            for f in LayerStats.FIELDS:
                setattr(total, f, getattr(total, f) + getattr(s, f))
        return {"slots": self.n_slots, "slot_bytes": self.slot_bytes, "pieces": self.pieces,
                "capacity": self.capacity, "banks": len(self.banks), "budget": self.budget.reason,
                "paging": self.paging,
                "resident": len(self.resident), "layers": layers, "total": total.as_dict(),
                "usage": {l: u.tolist() for l, u in self.usage.items()}, "memory": None, "tiers": None,
                "host_pins": self.host_pins.report() if self.host_pins else None}
