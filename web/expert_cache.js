// GPU residency of routed experts, the browser twin of engine/expert_cache.py: slots of one slab buffer,
// a slot table [layers, E], LRU eviction that spares the running batch and pinned experts, batches when a
// layer needs more experts than fit, statistics. Expert bytes come from the ModelStore (memory, OPFS, HTTP).
import { ExpertCacheError } from "./errors.js";
import { STORAGE } from "./executor.js";

export const NO_SLOT = 0xffffffff;

// One MoE layer as the plan records it: the steps that read the expert slab (start .. stop) and the plan
// buffer holding that layer's chosen expert ids.
export function expertSegments(plan) {
  return plan.moe_layers.map((r) => ({ layer: r.layer, start: r.experts[0], stop: r.experts[1], topkIds: r.topk_ids }));
}

const FIELDS = ["lookups", "hits", "misses", "evictions", "bytes_uploaded", "wait_s", "prefetched", "predicted",
                "predicted_used", "needed_after_prediction"];

export class ExpertCache {
  static async create(device, manifest, store, { budgetBytes, pinned = [], observe = false } = {}) {
    const c = new ExpertCache();
    const moe = manifest.moe;
    c.device = device;
    c.store = store;
    c.manifest = manifest;
    c.E = moe.num_experts;
    c.layers = moe.moe_layers;
    c.slotBytes = moe.expert_layout.slot_bytes;
    const total = c.layers.length * c.E;
    const fit = Math.floor(device.limits.maxStorageBufferBindingSize / c.slotBytes);
    if (budgetBytes != null && budgetBytes < c.slotBytes) {
      throw new ExpertCacheError(`an expert cache of ${(budgetBytes / 2 ** 20).toFixed(2)} MiB holds no expert; one needs ${(c.slotBytes / 2 ** 20).toFixed(2)} MiB`);
    }
    c.nSlots = Math.max(1, Math.min(total, fit, budgetBytes == null ? total : Math.floor(budgetBytes / c.slotBytes)));
    c.paging = c.nSlots < total;
    c.observe = observe;
    c.pinned = new Set(pinned.map(([l, e]) => `${l}_${e}`));
    if (c.paging && c.pinned.size >= c.nSlots) {
      throw new ExpertCacheError(`${c.pinned.size} pinned experts leave no free slot in a cache of ${c.nSlots}`);
    }
    c.slab = device.createBuffer({ size: c.nSlots * c.slotBytes, usage: STORAGE, label: "expert slab" });
    c.table = new Uint32Array(manifest.config.num_layers * c.E).fill(NO_SLOT);
    c.slotTable = device.createBuffer({ size: c.table.byteLength, usage: STORAGE, label: "expert slots" });
    c.resident = new Map();      // "l_e" -> slot, in LRU order (oldest first)
    c.free = Array.from({ length: c.nSlots }, (_, i) => c.nSlots - 1 - i);
    c.inUse = new Set();
    c.predictions = new Map();   // layer -> Set of experts prefetched for its next pass
    c.stats = Object.fromEntries(c.layers.map((l) => [l, Object.fromEntries(FIELDS.map((f) => [f, 0]))]));
    c.usage = Object.fromEntries(c.layers.map((l) => [l, new Array(c.E).fill(0)]));
    const startup = c.paging ? [...c.pinned] : c.layers.flatMap((l) => Array.from({ length: c.E }, (_, e) => `${l}_${e}`));
    for (const key of startup) await c.upload(key, c.free.pop());
    device.queue.writeBuffer(c.slotTable, 0, c.table);
    return c;
  }

  get readsRouting() {
    return this.paging || this.observe;
  }

  get variables() {
    return { slot0: 0, n_slots: this.nSlots };
  }

  async upload(key, slot) {
    const entry = this.manifest.experts[key];
    const bytes = await this.store.shard(entry.shard, { memo: this.paging });
    this.device.queue.writeBuffer(this.slab, slot * this.slotBytes, bytes, 0, entry.size);
    this.resident.set(key, slot);
    const [l, e] = key.split("_").map(Number);
    this.table[l * this.E + e] = slot;
  }

  record(layer, chosen) {
    for (const e of chosen) this.usage[layer][e]++;
  }

  takeSlot() {
    if (this.free.length) return this.free.pop();
    for (const [key, slot] of this.resident) {          // Map iterates oldest first
      if (this.inUse.has(key) || this.pinned.has(key)) continue;
      this.resident.delete(key);
      const [l, e] = key.split("_").map(Number);
      this.table[l * this.E + e] = NO_SLOT;
      this.stats[l].evictions++;
      return slot;
    }
    return null;
  }

  // Yields batches of the layer's needed experts, each resident with the slot table naming only it.
  async *batches(layer, chosen) {
    const need = [...new Set(chosen)].sort((a, b) => a - b);
    const st = this.stats[layer];
    st.lookups += need.length;
    const predicted = this.predictions.get(layer);
    if (predicted) {
      this.predictions.delete(layer);
      st.predicted += predicted.size;
      st.predicted_used += need.filter((e) => predicted.has(e)).length;
      st.needed_after_prediction += need.length;
    }
    const resident = (e) => this.resident.has(`${layer}_${e}`);
    let pending = [...need.filter(resident), ...need.filter((e) => !resident(e))];   // hits first
    while (pending.length) {
      const t0 = performance.now();
      const batch = [];
      this.inUse = new Set();
      for (const e of pending) {
        const key = `${layer}_${e}`;
        if (this.resident.has(key)) {
          st.hits++;
          const slot = this.resident.get(key);
          this.resident.delete(key);             // move to the most recently used end
          this.resident.set(key, slot);
        } else {
          const slot = this.takeSlot();
          if (slot == null) break;
          st.misses++;
          st.bytes_uploaded += this.slotBytes;
          await this.upload(key, slot);
        }
        batch.push(e);
        this.inUse.add(key);
      }
      pending = pending.slice(batch.length);
      const row = this.table.subarray(layer * this.E, (layer + 1) * this.E);
      row.fill(NO_SLOT);
      for (const e of batch) row[e] = this.resident.get(`${layer}_${e}`);
      this.device.queue.writeBuffer(this.slotTable, layer * this.E * 4, row);
      st.wait_s += (performance.now() - t0) / 1000;
      yield batch;
    }
    this.inUse = new Set();
  }

  // Loads experts predicted for a layer's next pass into free or least recently used slots.
  async prefetch(layer, experts) {
    const t0 = performance.now();
    const want = [...new Set(experts)].sort((a, b) => a - b);
    this.predictions.set(layer, new Set(want));
    const st = this.stats[layer];
    this.inUse = new Set(want.map((e) => `${layer}_${e}`));
    for (const e of want) {
      const key = `${layer}_${e}`;
      if (this.resident.has(key)) {
        const slot = this.resident.get(key);
        this.resident.delete(key);
        this.resident.set(key, slot);
        continue;
      }
      const slot = this.takeSlot();
      if (slot == null) break;
      await this.upload(key, slot);
      st.prefetched++;
      st.bytes_uploaded += this.slotBytes;
    }
    this.inUse = new Set();
    st.wait_s += (performance.now() - t0) / 1000;
  }

  // Statistics per layer and in total, routing usage and the in-memory shard cache: the same shape as
  // engine/expert_cache.py's report().
  report() {
    const total = Object.fromEntries(FIELDS.map((f) => [f, 0]));
    for (const s of Object.values(this.stats)) for (const f of FIELDS) total[f] += s[f];
    const layers = Object.fromEntries(Object.entries(this.stats).map(([l, s]) => [l, statsDict(s)]));
    return { slots: this.nSlots, slot_bytes: this.slotBytes, paging: this.paging, resident: this.resident.size,
             layers, total: statsDict(total), usage: this.usage, memory: this.store.memoryStats() };
  }
}

// A layer's counters with the rates derived from them, as LayerStats.as_dict() in Python.
function statsDict(s) {
  const ratio = (a, b) => (b ? a / b : null);
  return { ...s, wait_s: Math.round(s.wait_s * 1e6) / 1e6, hit_rate: ratio(s.hits, s.lookups),
           precision: ratio(s.predicted_used, s.predicted), recall: ratio(s.predicted_used, s.needed_after_prediction) };
}
