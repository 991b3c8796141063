// The browser engine, twin of engine/engine.py: uploads a package, runs its plan, samples on the GPU.
import { openDevice } from "./device.js";
import { ExpertCache, expertSegments } from "./expert_cache.js";
import { Executor, STORAGE } from "./executor.js";
import { ModelStore } from "./loader.js";
import { predictorPlan } from "./prefetch.js";
import { ShaderLibrary } from "./shaders.js";
import { TextTokenizer } from "./tokenizer.js";

class Readback {
  constructor(device, size) {
    this.buffer = device.createBuffer({ size: Math.max(16, size), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  }

  async read(size) {
    await this.buffer.mapAsync(GPUMapMode.READ, 0, size);
    const out = this.buffer.getMappedRange(0, size).slice(0);
    this.buffer.unmap();
    return out;
  }
}

// Seeded uniform [0, 1) generator for sampling (mulberry32).
function rng(seed) {
  let a = (seed ?? Math.floor(Math.random() * 2 ** 32)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Engine {
  // options: onProgress, maxSeqLen, chunkTokens, expertCacheBytes (GPU budget for routed experts),
  // memoryCacheBytes (in-memory LRU of expert shards when paging), pinnedExperts [[layer, expert]],
  // observeRouting (read back routing even when every expert is resident, for usage statistics),
  // prefetch (when paging: load each next MoE layer's predicted experts ahead of need)
  static async load(manifestUrl, { onProgress, maxSeqLen = 2048, chunkTokens = 64, shaderBase, expertCacheBytes,
                                   memoryCacheBytes, pinnedExperts = [], observeRouting = false,
                                   prefetch = false } = {}) {
    const e = new Engine();
    const gpu = await openDevice();
    e.device = gpu.device;
    e.adapter = gpu.description;
    const maxBinding = e.device.limits.maxStorageBufferBindingSize;
    const store = await ModelStore.open(manifestUrl, { onProgress, memoryBytes: memoryCacheBytes });
    e.store = store;
    const m = (e.manifest = store.manifest);
    e.vocab = m.config.vocab_size;
    e.maxSeqLen = Math.min(maxSeqLen, m.config.max_position_embeddings);
    e.chunk = Math.max(1, Math.min(chunkTokens, e.maxSeqLen));
    e.tokenizer = await TextTokenizer.load(store.url, m);

    const upload = (bytes, label) => {
      const buf = e.device.createBuffer({ size: Math.max(4, Math.ceil(bytes.byteLength / 4) * 4), usage: STORAGE, label });
      e.device.queue.writeBuffer(buf, 0, bytes);
      return buf;
    };
    const tensors = new Map();
    const byShard = new Map();
    for (const [name, t] of Object.entries(m.tensors)) {
      if (t.size > maxBinding) throw new Error(`tensor ${name} exceeds this adapter's storage binding limit`);
      if (!byShard.has(t.shard)) byShard.set(t.shard, []);
      byShard.get(t.shard).push([name, t]);
    }
    for (const [shard, list] of byShard) {
      const data = await store.shard(shard);
      for (const [name, t] of list) tensors.set(name, upload(new Uint8Array(data, t.offset, t.size), name));
    }
    e.experts = await ExpertCache.create(e.device, m, store, { budgetBytes: expertCacheBytes, pinned: pinnedExperts,
                                                               observe: observeRouting });
    e.segments = expertSegments(m.plan);
    e.topK = m.moe.top_k;
    const runtime = new Map([["experts", e.experts.slab], ["expert_slots", e.experts.slotTable]]);
    const shaders = new ShaderLibrary(shaderBase || new URL("../shaders/", import.meta.url));
    e.executor = await Executor.create(e.device, m.plan, tensors, runtime, { T: e.chunk, S: e.maxSeqLen }, shaders);
    e.tokenBuf = e.device.createBuffer({ size: 16, usage: STORAGE, label: "sampled token" });
    e.sampler = await Executor.create(e.device, { buffers: {}, steps: [{
      kernel: "sample", bind: { logits: "logits", token: "token" }, dispatch: [1, 1, 1],
      params: { V: e.vocab, row: 0, temperature: "temperature", top_p: "top_p", u: "u" } }] },
      new Map([["logits", e.executor.buffers.get("logits")], ["token", e.tokenBuf]]), new Map(), {}, shaders);
    e.logitsRb = new Readback(e.device, e.chunk * e.vocab * 4);
    e.routeRb = new Readback(e.device, 2 * e.chunk * e.topK * 4);
    e.predict = new Map();
    if (prefetch && e.experts.paging && e.segments.length > 1) {
      const p = predictorPlan(m.plan, e.segments, m.moe.num_experts, e.topK);
      e.predict = p.ranges;
      e.predictor = await Executor.create(e.device, p.plan, e.executor.buffers, new Map(),
                                          { T: e.chunk, S: e.maxSeqLen }, shaders);
    }
    e.tokenRb = new Readback(e.device, 4);
    e.pos = 0;
    return e;
  }

  checkIds(ids) {
    if (!Array.isArray(ids) && !(ids instanceof Uint32Array)) throw new Error("token ids must be an array");
    if (!ids.length || ![...ids].every((i) => Number.isInteger(i) && i >= 0 && i < this.vocab)) {
      throw new Error(`token ids must be a non-empty list of integers in [0, ${this.vocab})`);
    }
    if (this.pos + ids.length > this.maxSeqLen) throw new Error(`sequence longer than ${this.maxSeqLen} tokens`);
    return Uint32Array.from(ids);
  }

  // Runs one chunk at this.pos; returns an encoder with the last commands, not submitted. With paging (or
  // observed routing) each MoE layer's chosen experts are read back and made resident before its experts run.
  async forward(ids, logitRow0, nLogits) {
    const ex = this.executor;
    this.device.queue.writeBuffer(ex.buffers.get("ids"), 0, ids);
    const env = { T: ids.length, pos: this.pos, logit_row0: logitRow0, n_logits: nLogits, ...this.experts.variables };
    ex.writeParams(env);
    if (this.predictor) this.predictor.writeParams(env);
    let encoder = this.device.createCommandEncoder();
    let done = 0;
    if (this.experts.readsRouting) {
      const size = ids.length * this.topK * 4;
      for (const seg of this.segments) {
        ex.encodeRange(encoder, env, done, seg.start);
        encoder.copyBufferToBuffer(ex.buffers.get(seg.topkIds), 0, this.routeRb.buffer, 0, size);
        const predict = this.predict.get(seg.layer);
        if (predict) {          // the next MoE layer's router on this layer's router input
          this.predictor.encodeRange(encoder, env, predict[0], predict[1]);
          encoder.copyBufferToBuffer(this.predictor.buffers.get("pred_ids"), 0, this.routeRb.buffer, size, size);
        }
        this.device.queue.submit([encoder.finish()]);
        const t0 = performance.now();
        const routed = new Uint32Array(await this.routeRb.read(predict ? 2 * size : size));
        this.experts.stats[seg.layer].wait_s += (performance.now() - t0) / 1000;
        const chosen = routed.subarray(0, ids.length * this.topK);
        this.experts.record(seg.layer, chosen);
        for await (const _ of this.experts.batches(seg.layer, chosen)) {
          encoder = this.device.createCommandEncoder();
          ex.encodeRange(encoder, env, seg.start, seg.stop);
          this.device.queue.submit([encoder.finish()]);
        }
        if (predict) await this.experts.prefetch(predict[2], routed.subarray(ids.length * this.topK));
        encoder = this.device.createCommandEncoder();
        done = seg.stop;
      }
    }
    ex.encodeRange(encoder, env, done, ex.steps.length);
    this.pos += ids.length;
    return encoder;
  }

  expertStats() {
    return this.experts.report();
  }

  reset() {
    this.pos = 0;
  }

  // Appends tokens to the KV cache; returns their logits as a Float32Array [n * vocab].
  async extend(tokenIds) {
    const ids = this.checkIds(tokenIds);
    const out = new Float32Array(ids.length * this.vocab);
    for (let s = 0; s < ids.length; s += this.chunk) {
      const chunk = ids.subarray(s, s + this.chunk);
      const enc = await this.forward(chunk, 0, chunk.length);
      const size = chunk.length * this.vocab * 4;
      enc.copyBufferToBuffer(this.executor.buffers.get("logits"), 0, this.logitsRb.buffer, 0, size);
      this.device.queue.submit([enc.finish()]);
      out.set(new Float32Array(await this.logitsRb.read(size)), s * this.vocab);
    }
    return out;
  }

  async logits(tokenIds) {
    this.reset();
    return this.extend(tokenIds);
  }

  // Appends tokens and samples the next one on the GPU; reads back only its id.
  async step(tokenIds, temperature = 0, topP = 1, u = 0) {
    const ids = this.checkIds(tokenIds);
    let enc;
    for (let s = 0; s < ids.length; s += this.chunk) {
      const chunk = ids.subarray(s, s + this.chunk);
      const last = s + this.chunk >= ids.length;
      enc = await this.forward(chunk, chunk.length - 1, last ? 1 : 0);
      if (!last) this.device.queue.submit([enc.finish()]);
    }
    this.sampler.encode(enc, { temperature, top_p: topP, u });
    enc.copyBufferToBuffer(this.tokenBuf, 0, this.tokenRb.buffer, 0, 4);
    this.device.queue.submit([enc.finish()]);
    return new Uint32Array(await this.tokenRb.read(4))[0];
  }

  // Yields {id, text} per new token. options: maxNewTokens, temperature, topP, seed, stop, signal.
  async *generate(prompt, { maxNewTokens = 128, temperature = 0, topP = 1, seed, stop = [], signal } = {}) {
    const stops = (typeof stop === "string" ? [stop] : stop).filter(Boolean);
    this.reset();
    let ids = this.checkIds(this.tokenizer.promptIds(prompt));
    const budget = Math.min(maxNewTokens, this.maxSeqLen - ids.length + 1);
    const random = rng(seed);
    const generated = [];
    let text = "";
    let emitted = 0;
    for (let i = 0; i < budget && !signal?.aborted; i++) {
      const token = await this.step(ids, temperature, topP, random());
      ids = [token];
      if (this.tokenizer.eos.has(token)) {
        yield { id: token, text: text.slice(emitted) };
        return;
      }
      generated.push(token);
      const full = this.tokenizer.decode(generated);
      if (!full.endsWith("\ufffd")) text = full;
      const hits = stops.map((s) => text.indexOf(s, Math.max(0, emitted - s.length))).filter((j) => j >= 0);
      if (hits.length) {
        yield { id: token, text: text.slice(emitted, Math.min(...hits)) };
        return;
      }
      const safe = i === budget - 1 ? text.length : text.length - pendingStop(text, stops);
      yield { id: token, text: text.slice(emitted, Math.max(emitted, safe)) };
      emitted = Math.max(emitted, safe);
    }
  }
}

// Length of the longest suffix of text that is a proper prefix of a stop string.
function pendingStop(text, stops) {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > 0; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = Math.max(best, n);
        break;
      }
    }
  }
  return best;
}
