// The engine's home: a dedicated worker, so the page stays responsive while the GPU works.
// Messages in: {id, op: "load"|"tokenize"|"logits"|"generate"|"stats"|"stop"|"list"|"delete", ...}; out: {id, ...}.
import { Engine } from "./engine.js";
import { deleteCached, listCached } from "./loader.js";

let engine = null;
let abort = null;

const ops = {
  async load({ id, manifestUrl, options }) {
    engine = await Engine.load(manifestUrl, { ...options, onProgress: (p) => postMessage({ id, progress: p }) });
    return { adapter: engine.adapter, family: engine.manifest.family, description: engine.describe(),
             config: engine.manifest.config,
             moe: { ...engine.manifest.moe, expert_layout: undefined } };
  },
  async tokenize({ prompt }) {
    return { ids: engine.tokenizer.promptIds(prompt) };
  },
  async logits({ ids }) {
    const out = await engine.logits(ids);
    return { logits: out };
  },
  async generate({ id, prompt, options }) {
    abort = new AbortController();
    let n = 0;
    const t0 = performance.now();
    const run = engine.generate(prompt, { ...options, signal: abort.signal });
    for await (const token of run) {
      n++;
      postMessage({ id, token: engine.experts.readsRouting ? { ...token, usage: engine.experts.usage } : token });
    }
    return { tokens: n, seconds: (performance.now() - t0) / 1000, finishReason: run.finishReason,
             promptTokens: run.promptTokens, completionTokens: run.completionTokens };
  },
  async stats() {
    return { stats: engine.expertStats() };
  },
  async stop() {
    abort?.abort();
    return {};
  },
  async list() {
    return { models: await listCached() };
  },
  async delete({ modelId }) {
    await deleteCached(modelId);
    return {};
  },
};

self.onmessage = async ({ data }) => {
  try {
    const result = await ops[data.op](data);
    postMessage({ id: data.id, done: true, result }, result?.logits ? [result.logits.buffer] : []);
  } catch (err) {
    postMessage({ id: data.id, done: true, error: String(err?.message || err), name: err?.name });
  }
};
