// GPU residency of routed experts, the browser twin of engine/expert_cache.py: slots of a slab of several
// buffers (banks, each at most one storage binding), a slot table [layers, E, pieces], LRU eviction that
// spares the running batch and pinned experts, batches when a layer needs more experts than fit,
// statistics. Expert bytes come from the ModelStore (memory, OPFS, HTTP).
import { ExpertCacheError } from "./errors.js";
import { STORAGE, padded } from "./executor.js";
import { gib } from "./units.js";

export const NO_SLOT = 0xffffffff;
const MAX_ELEMENTS = 2 ** 32 - 1;     // of one bank, as the kernels index it

// One MoE layer as the plan records it: the steps that read the expert slab (start .. stop) and the plan
// buffer holding that layer's chosen expert ids.
export function expertSegments(plan) {
  return plan.moe_layers.map((r) => ({ layer: r.layer, start: r.experts[0], stop: r.experts[1], topkIds: r.topk_ids }));
}

const FIELDS = ["lookups", "hits", "misses", "evictions", "bytes_uploaded", "wait_s", "prefetched", "predicted",
                "predicted_used", "needed_after_prediction"];

export class ExpertCache {
  // gpu: openDevice()'s result. budgetBytes: the GPU budget for routed experts; by default every expert is
  // asked for and the slab grows bank by bank until an allocation fails (WebGPU does not report memory).
  // onDemand: no expert is loaded up front; each is loaded the first time the router chooses it (the
  // store fetches its shard then), so the cache pages even when every expert would fit.
  // onUpload(bytes, of): after each expert uploaded at startup (load progress; `of` all their bytes).
  static async create(gpu, manifest, store, { budgetBytes, pinned = [], observe = false, onDemand = false,
                                             onUpload = () => {} } = {}) {
    const c = new ExpertCache();
    const moe = manifest.moe;
    const device = gpu.device;
    c.device = device;
    c.store = store;
    c.manifest = manifest;
    c.E = moe.num_experts;
    c.layers = moe.moe_layers;
    c.slotBytes = moe.expert_layout.slot_bytes;
    c.pieces = moe.expert_layout.pieces;
    c.expertBytes = c.slotBytes * c.pieces;
    const total = c.layers.length * c.E;
    c.budget = budgetBytes == null
      ? { bytes: total * c.expertBytes, reason: `every expert (${gib(total * c.expertBytes)}) requested: WebGPU does not report GPU memory, so the slab grows bank by bank until an allocation fails` }
      : { bytes: budgetBytes, reason: `${gib(budgetBytes)} asked for` };
    if (c.budget.bytes < c.expertBytes) {
      throw new ExpertCacheError(`an expert cache of ${(c.budget.bytes / 2 ** 20).toFixed(2)} MiB holds no expert; one expert needs ${(c.expertBytes / 2 ** 20).toFixed(2)} MiB`);
    }
    // a bank is one binding; the kernels address its elements with u32 (4-bit formats hold more
    // elements than bytes)
    c.slotsPerBank = Math.max(1, Math.min(Math.floor(Math.min(gpu.maxBinding, gpu.maxBuffer) / c.slotBytes),
                                          Math.floor(MAX_ELEMENTS / moe.expert_layout.slot_elems)));
    c.banks = [];
    c.bankInfo = [];
    const wanted = Math.min(total, Math.floor(c.budget.bytes / c.expertBytes)) * c.pieces;
    c.capacity = Math.floor((await c.allocate(wanted, wanted === total * c.pieces && !onDemand)) / c.pieces);
    if (c.nSlots < wanted) {
      c.budget = { bytes: c.nSlots * c.slotBytes, reason: `${c.budget.reason}; the adapter allocated only ${gib(c.nSlots * c.slotBytes)}` };
    }
    c.paging = c.capacity < total || onDemand;
    c.observe = observe;
    c.pinned = new Set(pinned.map(([l, e]) => `${l}_${e}`));
    const bad = pinned.filter(([l, e]) => !c.layers.includes(l) || !(e >= 0 && e < c.E))
      .sort(([a, b], [x, y]) => a - x || b - y);
    if (bad.length) {
      throw new ExpertCacheError(`pinned experts [${bad.map(([l, e]) => `(${l}, ${e})`).join(", ")}] do not exist in this model`);
    }
    if (c.paging && c.pinned.size >= c.capacity) {
      throw new ExpertCacheError(`${c.pinned.size} pinned experts leave no free slot in a cache of ${c.capacity}`);
    }
    c.table = new Uint32Array(manifest.config.num_layers * c.E * c.pieces).fill(NO_SLOT);
    c.slotTable = device.createBuffer({ size: c.table.byteLength, usage: STORAGE, label: "expert slots" });
    c.resident = new Map();      // "l_e" -> [slot per piece], in LRU order (oldest first)
    c.free = Array.from({ length: c.nSlots }, (_, i) => c.nSlots - 1 - i);
    c.inUse = new Set();
    c.predictions = new Map();   // layer -> Set of experts prefetched for its next pass
    c.stats = Object.fromEntries(c.layers.map((l) => [l, Object.fromEntries(FIELDS.map((f) => [f, 0]))]));
    c.usage = Object.fromEntries(c.layers.map((l) => [l, new Array(c.E).fill(0)]));
    const startup = c.paging ? [...c.pinned] : c.layers.flatMap((l) => Array.from({ length: c.E }, (_, e) => `${l}_${e}`));
    for (const key of startup) {
      await c.upload(key, c.takeSlots());
      onUpload(c.expertBytes, startup.length * c.expertBytes);
    }
    device.queue.writeBuffer(c.slotTable, 0, c.table);
    // banks each layer's resident experts occupy (while nothing is paged, they never change)
    c.layerBanks = new Map(c.layers.map((l) => [l, c.banksOf(l, Array.from({ length: c.E }, (_, e) => e))]));
    return c;
  }

  // Creates banks for nSlots slots, stopping early if the adapter refuses one; returns the slots. perLayer
  // (every expert resident): each bank holds slots of one layer only, experts in order, so its window of
  // experts is narrow; otherwise every bank may hold any expert of any layer.
  async allocate(nSlots, perLayer) {
    const E = this.E, P = this.pieces;
    const sizes = [];               // [slots, first expert, experts] per bank
    if (perLayer) {
      for (const _ of this.layers) {
        for (let s0 = 0; s0 < E * P; s0 += this.slotsPerBank) {
          const n = Math.min(this.slotsPerBank, E * P - s0);
          sizes.push([n, Math.floor(s0 / P), Math.floor((s0 + n - 1) / P) - Math.floor(s0 / P) + 1]);
        }
      }
    } else {
      for (let s0 = 0; s0 < nSlots; s0 += this.slotsPerBank) sizes.push([Math.min(this.slotsPerBank, nSlots - s0), 0, E]);
    }
    this.nSlots = 0;
    this.bankStart = [];
    this.bankEnv = [];
    for (const [n, e0, nE] of sizes) {
      this.device.pushErrorScope("out-of-memory");
      const bank = this.device.createBuffer({ size: padded(n * this.slotBytes), usage: STORAGE, label: `expert slab bank ${this.banks.length}` });
      const error = await this.device.popErrorScope();
      if (error) {
        bank.destroy();
        if (this.nSlots < P) throw new ExpertCacheError(`the adapter cannot allocate one expert (${gib(this.expertBytes)}): ${error.message}`);
        this.bankInfo.forEach((info, b) => this.setWindow(b, 0, E));     // paging: any bank may hold any expert
        break;
      }
      this.banks.push(bank);
      this.bankStart.push(this.nSlots);
      this.bankInfo.push(this.device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
                                                    label: `expert bank ${this.banks.length - 1} range` }));
      this.bankEnv.push({});
      this.setWindow(this.banks.length - 1, e0, nE);
      this.nSlots += n;
    }
    return this.nSlots;
  }

  // Bank b's uniform: its first slot, slot count, first expert and number of experts it may hold.
  setWindow(b, e0, nE) {
    const n = Math.floor(this.banks[b].size / this.slotBytes);     // a bank is padded to 16 bytes
    this.device.queue.writeBuffer(this.bankInfo[b], 0, new Uint32Array([this.bankStart[b], n, e0, nE]));
    this.bankEnv[b] = { bank_experts: nE };
  }

  // -> [bank, slot index within it]
  bankOf(slot) {
    let b = this.bankStart.length - 1;
    while (this.bankStart[b] > slot) b--;
    return [b, slot - this.bankStart[b]];
  }

  get buffers() {
    return new Map([["experts", this.banks], ["expert_bank", this.bankInfo], ["expert_slots", this.slotTable]]);
  }

  // The banks holding the resident pieces of these experts of a layer.
  banksOf(layer, experts) {
    const banks = new Set();
    for (const e of experts) for (const s of this.resident.get(`${layer}_${e}`) || []) banks.add(this.bankOf(s)[0]);
    return [...banks].sort((a, b) => a - b);
  }

  get readsRouting() {
    return this.paging || this.observe;
  }

  describe() {
    const total = this.layers.length * this.E;
    const where = `${this.banks.length} bank${this.banks.length > 1 ? "s" : ""}`;
    if (this.paging) {
      return `${this.capacity} of ${total} experts resident at once (${gib(this.capacity * this.expertBytes)} in ${where}), the rest paged; budget: ${this.budget.reason}`;
    }
    return `all ${total} experts resident (${gib(total * this.expertBytes)} in ${where}); budget: ${this.budget.reason}`;
  }

  async upload(key, slots) {
    const entry = this.manifest.experts[key];
    const bytes = await this.store.shard(entry.shard, { memo: this.paging });
    slots.forEach((slot, piece) => {
      const [bank, at] = this.bankOf(slot);
      this.device.queue.writeBuffer(this.banks[bank], at * this.slotBytes, bytes, piece * this.slotBytes, this.slotBytes);
    });
    this.resident.set(key, slots);
    const [l, e] = key.split("_").map(Number);
    this.table.set(slots, (l * this.E + e) * this.pieces);
  }

  record(layer, chosen) {
    for (const e of chosen) this.usage[layer][e]++;
  }

  // Slots for one expert's pieces: free ones, else those of the least recently used experts not in the
  // running batch and not pinned; null if there are not enough.
  takeSlots() {
    while (this.free.length < this.pieces) {
      let victim = null;
      for (const key of this.resident.keys()) {          // Map iterates oldest first
        if (!this.inUse.has(key) && !this.pinned.has(key)) { victim = key; break; }
      }
      if (victim == null) return null;
      this.free.push(...this.resident.get(victim));
      this.resident.delete(victim);
      const [l, e] = victim.split("_").map(Number);
      this.table.fill(NO_SLOT, (l * this.E + e) * this.pieces, (l * this.E + e + 1) * this.pieces);
      this.stats[l].evictions++;
    }
    return Array.from({ length: this.pieces }, () => this.free.pop());
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
    const shardOf = (e) => this.manifest.experts[`${layer}_${e}`].shard;
    // predicted experts the router did not choose give the link back to those it did, unless already under way
    if (predicted) for (const e of predicted) if (!need.includes(e)) this.store.drop(shardOf(e));
    // the missing experts' shards are read (or fetched) all at once, not one after another as they upload
    for (const e of need) if (!resident(e)) this.store.warm(shardOf(e));
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
          const slots = this.takeSlots();
          if (slots == null) break;
          st.misses++;
          st.bytes_uploaded += this.expertBytes;
          await this.upload(key, slots);
        }
        batch.push(e);
        this.inUse.add(key);
      }
      pending = pending.slice(batch.length);
      const P = this.pieces;
      const row = this.table.subarray(layer * this.E * P, (layer + 1) * this.E * P);
      row.fill(NO_SLOT);
      for (const e of batch) row.set(this.resident.get(`${layer}_${e}`), e * P);
      this.device.queue.writeBuffer(this.slotTable, layer * this.E * P * 4, row);
      st.wait_s += (performance.now() - t0) / 1000;
      yield batch;
    }
    this.inUse = new Set();
  }

  // Starts fetching the shards of experts predicted for a later layer that are neither resident nor local,
  // as soon as the prediction is read back: their transfers wait behind the experts needed now, so the link
  // goes on to them the moment those have arrived (prefetch() uploads them once this layer's experts run).
  // Most-predicted first (the experts the most tokens are predicted to choose): when the router's choice
  // arrives, the transfers still waiting are the least likely ones, and those it did not choose are dropped.
  // (Browser only: natively the shards are on disk, and prefetch() reads them at once.)
  fetchAhead(layer, experts) {
    const votes = new Map();
    for (const e of experts) votes.set(e, (votes.get(e) || 0) + 1);
    for (const [e] of [...votes].sort((a, b) => b[1] - a[1] || a[0] - b[0])) {
      const shard = this.manifest.experts[`${layer}_${e}`].shard;
      if (!this.resident.has(`${layer}_${e}`) && !this.store.isLocal(shard)) this.store.warm(shard, { ahead: true });
    }
  }

  // Loads experts predicted for a layer's next pass into free or least recently used slots. Those whose
  // shard must come over the network were started by fetchAhead() (the fetch goes on while the GPU works;
  // the layer's pass uploads them), so a prediction never waits for the network.
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
      if (!this.store.isLocal(this.manifest.experts[key].shard)) continue;
      const slots = this.takeSlots();
      if (slots == null) break;
      await this.upload(key, slots);
      st.prefetched++;
      st.bytes_uploaded += this.expertBytes;
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
    return { slots: this.nSlots, slot_bytes: this.slotBytes, pieces: this.pieces, capacity: this.capacity,
             banks: this.banks.length, budget: this.budget.reason, paging: this.paging, resident: this.resident.size,
             layers, total: statsDict(total), usage: this.usage, memory: this.store.memoryStats(),
             tiers: this.store.tierStats(), host_pins: null };     // natively: experts held in host memory
  }
}

// A layer's counters with the rates derived from them, as LayerStats.as_dict() in Python.
function statsDict(s) {
  const ratio = (a, b) => (b ? a / b : null);
  return { ...s, wait_s: Math.round(s.wait_s * 1e6) / 1e6, hit_rate: ratio(s.hits, s.lookups),
           precision: ratio(s.predicted_used, s.predicted), recall: ratio(s.predicted_used, s.needed_after_prediction) };
}
