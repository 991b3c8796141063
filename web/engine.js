// The browser engine, twin of engine/engine.py: uploads a package, runs its plan, samples on the GPU.
import { openDevice } from "./device.js";
import { PromptError } from "./errors.js";
import { ExpertCache, expertSegments } from "./expert_cache.js";
import { Executor, STORAGE, compileSteps, padded } from "./executor.js";
import { Generator } from "./batch.js";
import { GenerationConfig } from "./generation.js";
import { ModelStore } from "./loader.js";
import { engineOptions } from "./options.js";
import { planFor } from "./plan_variants.js";
import { predictorPlan } from "./prefetch.js";
import { checkResources, planBytes } from "./resources.js";
import { ShaderLibrary } from "./shaders.js";
import { TextTokenizer } from "./tokenizer.js";
import { gib } from "./units.js";

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

export class Engine {
  // options: web/options.js's fields (engineOptions checks them once)
  static async load(manifestUrl, given = {}) {
    const o = engineOptions(given);
    const e = new Engine();
    const report = o.onProgress || (() => {});
    const gpu = await openDevice({ maxBinding: o.maxBinding });
    e.device = gpu.device;
    e.adapter = gpu.description;
    // a device lost by anything but unload() (driver reset, GPU process crash, memory reclaimed) is told
    e.device.lost.then((info) => { if (!e.unloaded) o.onDeviceLost?.(info.message || info.reason || "unknown reason"); });
    const store = await ModelStore.open(manifestUrl, {
      onProgress: report, memoryBytes: o.memoryCacheBytes, digest: o.digest,
      expertsOnDemand: o.expertsOnDemand, opfsBudgetBytes: o.opfsBudgetBytes, hotExperts: o.hotExperts,
      storage: o.storage });
    e.store = store;
    const m = (e.manifest = store.manifest);
    e.adapterClass = o.adapterClass || gpu.adapterClass;
    const plan = (e.plan = planFor(m.plan, e.adapterClass));      // the steps' geometry for this adapter
    // the kernels compile (each variant once, in parallel) while the shards download
    const shaders = new ShaderLibrary(o.shaderBase);
    const compiled = compileSteps(gpu, [...plan.steps, ...plan.sampler], shaders,
                                  (done, total) => report({ stage: "compile", done, total }));
    compiled.catch(() => {});          // awaited below; a failure is reported there, after the download's
    await store.fetchMissing();
    e.vocab = m.config.vocab_size;
    e.maxSeqLen = Math.min(o.maxSeqLen, m.config.max_position_embeddings);
    e.chunk = Math.min(o.chunkTokens, e.maxSeqLen);
    e.tokenizer = await TextTokenizer.load(store.url, m);
    e.io = plan.io;             // the buffers of token ids, logits and the sampled token
    e.maskWords = plan.buffers[e.io.token_mask].shape[1];     // u32 words of a token_mask row
    checkResources(plan, gpu.maxBinding, e.chunk, e.maxSeqLen);
    e.memory = planBytes(plan, e.chunk, e.maxSeqLen);     // buffers, kv_cache, kv_per_token

    const upload = (bytes, label) => {
      const buf = e.device.createBuffer({ size: padded(bytes.byteLength), usage: STORAGE, label });
      e.device.queue.writeBuffer(buf, 0, bytes);
      return buf;
    };
    const tensors = new Map();
    const byShard = new Map();
    for (const [name, t] of Object.entries(m.tensors)) {
      if (!byShard.has(t.shard)) byShard.set(t.shard, []);
      byShard.get(t.shard).push([name, t]);
    }
    // upload: the dense shards, then the experts that start resident (read from OPFS and verified)
    const dense = [...byShard.keys()].reduce((a, f) => a + store.entries.get(f).size, 0);
    const uploading = { stage: "upload", loaded: 0, total: dense };
    const uploaded = (bytes, experts = 0) => {
      Object.assign(uploading, { loaded: uploading.loaded + bytes, total: dense + experts });
      report({ ...uploading });
    };
    uploaded(0);
    for (const [shard, list] of byShard) {
      const data = await store.shard(shard);
      for (const [name, t] of list) tensors.set(name, upload(new Uint8Array(data, t.offset, t.size), name));
      uploaded(data.byteLength);
    }
    e.experts = await ExpertCache.create(gpu, m, store, {
      budgetBytes: o.expertCacheBytes, pinned: o.pinnedExperts, observe: o.observeRouting,
      onDemand: o.expertsOnDemand, onUpload: uploaded });
    e.segments = expertSegments(plan);
    e.topK = m.moe.top_k;
    const runtime = e.experts.buffers;
    await compiled;
    e.executor = await Executor.create(gpu, plan, tensors, runtime, { T: e.chunk, S: e.maxSeqLen }, shaders);
    e.sampler = await Executor.create(gpu, { buffers: {}, steps: plan.sampler }, e.executor.buffers, new Map(),
                                      {}, shaders);
    e.logitsRb = new Readback(e.device, e.chunk * e.vocab * 4);
    e.routeRb = new Readback(e.device, 2 * e.chunk * e.topK * 4);
    e.predict = new Map();
    if ((o.prefetch ?? o.expertsOnDemand) && e.experts.paging && e.segments.length > 1) {
      const p = predictorPlan(plan, m.moe.num_experts, e.topK);
      e.predict = p.ranges;
      e.predictor = await Executor.create(gpu, p.plan, e.executor.buffers, new Map(),
                                          { T: e.chunk, S: e.maxSeqLen }, shaders);
    }
    e.tokenRb = new Readback(e.device, 4);
    e.maxBatch = 1;          // KV slots: the browser decodes one sequence (engine.py's max_batch)
    e.profiler = null;       // a profiler.js Profiler times every dispatch (webmoe speed --browser --profile)
    // the last decode() or prefill(): seconds recording and submitting its commands (the host's share, and the
    // per-layer read-backs when experts are paged) and from its last submission to the sampled token in hand
    // (the adapter's work and the round trip); speed.js reports them
    e.lastStep = { encode_s: 0, wait_s: 0 };
    if (o.expertsOnDemand && o.backgroundDownload) store.fillInBackground();
    e.ephemeral = store.ephemeral;     // why nothing of the model is kept in the browser (null: OPFS keeps it)
    return e;
  }

  checkIds(ids) {
    if (!Array.isArray(ids) && !(ids instanceof Uint32Array)) throw new PromptError("token ids must be an array");
    if (!ids.length || ![...ids].every((i) => Number.isInteger(i) && i >= 0 && i < this.vocab)) {
      throw new PromptError(`token ids must lie in [0, ${this.vocab})`);
    }
    if (ids.length > this.maxSeqLen) {
      throw new PromptError(`${ids.length} tokens exceed the maximum sequence length ${this.maxSeqLen}`);
    }
    return Uint32Array.from(ids);
  }

  // Positions pos0 .. pos0 + n of the sequence in KV slot `slot`, and their cache rows.
  places(slot, pos0, n) {
    if (!(slot >= 0 && slot < this.maxBatch)) throw new PromptError(`KV slot ${slot} is outside [0, ${this.maxBatch})`);
    if (pos0 < 0 || pos0 + n > this.maxSeqLen) {
      throw new PromptError(`${pos0 + n} tokens exceed the maximum sequence length ${this.maxSeqLen}`);
    }
    const positions = Uint32Array.from({ length: n }, (_, t) => pos0 + t);
    return { positions, rows: positions.map((p) => slot * this.maxSeqLen + p) };
  }

  // Runs one chunk at places ({positions, rows}); returns an encoder with the last commands, not submitted.
  // With paging (or observed routing) each MoE layer's chosen experts are read back and made resident
  // before its experts run.
  async forward(ids, places, logitRow0, nLogits) {
    const ex = this.executor;
    this.device.queue.writeBuffer(ex.buffers.get(this.io.ids), 0, ids);
    this.device.queue.writeBuffer(ex.buffers.get(this.io.positions), 0, places.positions);
    this.device.queue.writeBuffer(ex.buffers.get(this.io.cache_rows), 0, places.rows);
    const env = { T: ids.length, logit_row0: logitRow0, n_logits: nLogits };
    ex.writeParams(env);
    if (this.predictor) this.predictor.writeParams(env);
    let encoder = this.device.createCommandEncoder();
    let done = 0;
    const cache = this.experts;
    const size = ids.length * this.topK * 4;
    for (const seg of this.segments) {
      ex.encodeRange(encoder, env, done, seg.start, null, null, this.profiler);
      done = seg.stop;
      if (!cache.readsRouting) {              // every expert resident: no read-back
        ex.encodeRange(encoder, env, seg.start, seg.stop, cache.layerBanks.get(seg.layer), cache.bankEnv, this.profiler);
        continue;
      }
      encoder.copyBufferToBuffer(ex.buffers.get(seg.topkIds), 0, this.routeRb.buffer, 0, size);
      const predict = this.predict.get(seg.layer);
      if (predict) {          // the next MoE layer's router on this layer's router input
        this.predictor.encodeRange(encoder, env, predict[0], predict[1], null, null, this.profiler);
        encoder.copyBufferToBuffer(this.predictor.buffers.get("pred_ids"), 0, this.routeRb.buffer, size, size);
      }
      this.device.queue.submit([encoder.finish()]);
      const t0 = performance.now();
      const routed = new Uint32Array(await this.routeRb.read(predict ? 2 * size : size));
      cache.stats[seg.layer].wait_s += (performance.now() - t0) / 1000;
      const chosen = routed.subarray(0, ids.length * this.topK);
      cache.record(seg.layer, chosen);
      if (predict) cache.fetchAhead(predict[2], routed.subarray(ids.length * this.topK));
      for await (const batch of cache.batches(seg.layer, chosen)) {
        encoder = this.device.createCommandEncoder();
        ex.encodeRange(encoder, env, seg.start, seg.stop, cache.banksOf(seg.layer, batch), cache.bankEnv, this.profiler);
        this.device.queue.submit([encoder.finish()]);
      }
      if (predict) await cache.prefetch(predict[2], routed.subarray(ids.length * this.topK));
      encoder = this.device.createCommandEncoder();
    }
    ex.encodeRange(encoder, env, done, ex.steps.length, null, null, this.profiler);
    return encoder;
  }

  expertStats() {
    return this.experts.report();
  }

  // One line on what was loaded where (the twin of Engine.describe() natively).
  describe() {
    const m = this.memory;
    return `${this.manifest.family} on ${this.adapter}; KV cache ${gib(m.kv_cache)} for ${this.maxSeqLen} tokens (${m.kv_per_token} bytes per token); ${this.experts.describe()}`;
  }

  // Frees the engine's GPU memory at once (the device is destroyed; the engine cannot be used after).
  unload() {
    this.unloaded = true;
    this.store.close();
    this.device.destroy();
  }

  // The one chunk loop: runs ids into KV slot `slot` at positions pos0 .., a chunk per pass. everyLogit:
  // returns the logits of every token (Float32Array [n * vocab]); else the last pass's encoder, not
  // submitted, with the last token's logits in row 0 (for the sampler).
  async chunks(slot, ids, pos0, everyLogit) {
    this.places(slot, pos0, ids.length);     // the whole range, before any chunk runs
    const out = everyLogit ? new Float32Array(ids.length * this.vocab) : null;
    let enc;
    for (let s = 0; s < ids.length; s += this.chunk) {
      const chunk = ids.subarray(s, s + this.chunk);
      const last = s + this.chunk >= ids.length;
      const places = this.places(slot, pos0 + s, chunk.length);
      if (everyLogit) {
        enc = await this.forward(chunk, places, 0, chunk.length);
        const size = chunk.length * this.vocab * 4;
        enc.copyBufferToBuffer(this.executor.buffers.get(this.io.logits), 0, this.logitsRb.buffer, 0, size);
        this.device.queue.submit([enc.finish()]);
        out.set(new Float32Array(await this.logitsRb.read(size)), s * this.vocab);
        continue;
      }
      enc = await this.forward(chunk, places, chunk.length - 1, last ? 1 : 0);
      if (!last) this.device.queue.submit([enc.finish()]);
    }
    return everyLogit ? out : enc;
  }

  // Logits (Float32Array [n * vocab]) of tokenIds placed at positions pos0 .. of the sequence in KV slot
  // `slot` (pos0 = 0: a fresh sequence).
  async logits(tokenIds, pos0 = 0, slot = 0) {
    return this.chunks(slot, this.checkIds(tokenIds), pos0, true);
  }

  // Appends tokens to the sequence in KV slot `slot` (positions pos0 ..) and samples the next token on the
  // GPU from the last one's logits; reads back only its id.
  async prefill(slot, tokenIds, pos0, sampling) {
    const t0 = performance.now();
    const enc = await this.chunks(slot, this.checkIds(tokenIds), pos0, false);
    return (await this.sample(enc, [sampling], t0))[0];
  }

  // One forward pass for the sequences of rows [[token, position, slot]], a token each, with a sampling
  // ({temperature, topP, u}) per row; returns the next token of each.
  async decode(rows, sampling) {
    const t0 = performance.now();
    if (!(rows.length > 0 && rows.length <= this.maxBatch) || new Set(rows.map(([, , s]) => s)).size !== rows.length) {
      throw new PromptError(`a decode pass takes 1 to ${this.maxBatch} rows of distinct slots`);
    }
    const ids = this.checkIds(rows.map(([t]) => t));
    const places = { positions: Uint32Array.from(rows, ([, p]) => p), rows: Uint32Array.from(rows, ([, p, s]) => s * this.maxSeqLen + p) };
    if (rows.some(([, p, s]) => p >= this.maxSeqLen || s >= this.maxBatch)) throw new PromptError("a decode row lies outside the KV cache");
    return this.sample(await this.forward(ids, places, 0, rows.length), sampling, t0);
  }

  // Samples logits row 0 on the GPU (after its grammar's mask when it has one) and reads back the token (one
  // row: the browser decodes one sequence). t0: when the step began (for lastStep).
  async sample(enc, sampling, t0) {
    const [{ temperature, topP, u, mask }] = sampling;
    if (mask) this.device.queue.writeBuffer(this.executor.buffers.get(this.io.token_mask), 0, this.maskRow(mask));
    this.sampler.encode(enc, { temperature, top_p: topP, u, masked: mask ? 1 : 0, sampling: temperature > 0 ? 1 : 0 },
                        this.profiler);
    enc.copyBufferToBuffer(this.executor.buffers.get(this.io.token), 0, this.tokenRb.buffer, 0, 4);
    const t1 = performance.now();
    this.device.queue.submit([enc.finish()]);
    const token = new Uint32Array(await this.tokenRb.read(4))[0];
    this.lastStep = { encode_s: (t1 - t0) / 1000, wait_s: (performance.now() - t1) / 1000 };
    return [token];
  }

  maskRow(mask) {
    if (!(mask instanceof Uint32Array) || mask.length !== this.maskWords) {
      throw new PromptError(`a token mask has ${this.maskWords} u32 words (one bit per token), not ${mask?.length}`);
    }
    return mask;
  }

  // A Generator (for await ... of it) of {id, text} per new token. prompt: text, token ids or chat messages.
  // options: maxNewTokens, temperature (0 = greedy), topP, seed, stop, grammar (constraint.js's
  // jsonGrammar(schema)), signal (an AbortSignal that ends it).
  generate(prompt, { signal, ...options } = {}) {
    const config = new GenerationConfig(options);
    return new Generator(this, config, this.checkIds(this.tokenizer.promptIds(prompt)), signal);
  }
}
