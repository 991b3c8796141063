// The engine's home: a dedicated worker, so the page stays responsive while the GPU works. An app that
// owns its worker imports this module there (`import "webmoe/worker"`) and passes the Worker to load().
// Messages in: {id, op: "load"|"tokenize"|"logits"|"generate"|"stats"|"stop"|"unload"|"list"|"delete", handle
// (the engine load returned), ...}; out: {id, ...}, and {event: "device-lost", handle, message} unasked.
import { responseFormatGrammar } from "./constraint.js";
import { Engine } from "./engine.js";
import { deleteCached, listCached } from "./opfs.js";
import { measureSpeed } from "./speed.js";

// a page may load several models (or load while another load runs): each engine has a handle
const engines = new Map();     // handle -> {engine, abort}
let nextHandle = 0;

function get(handle) {
  const e = engines.get(handle);
  if (!e) throw new Error("this engine is not loaded in the worker");
  return e;
}

const ops = {
  async load({ id, manifestUrl, options }) {
    const handle = ++nextHandle;
    const engine = await Engine.load(manifestUrl, {
      ...options, onProgress: (p) => postMessage({ id, progress: p }),
      onDeviceLost: (message) => { if (engines.delete(handle)) postMessage({ event: "device-lost", handle, message }); },
    });
    engines.set(handle, { engine, abort: null });
    return { handle, adapter: engine.adapter, adapterClass: engine.adapterClass, family: engine.manifest.family, description: engine.describe(),
             ephemeral: engine.ephemeral,
             config: engine.manifest.config,
             moe: { ...engine.manifest.moe, expert_layout: undefined } };
  },
  async tokenize({ handle, prompt }) {
    return { ids: get(handle).engine.tokenizer.promptIds(prompt) };
  },
  async logits({ handle, ids }) {
    const out = await get(handle).engine.logits(ids);
    return { logits: out };
  },
  // options: generate()'s, with responseFormat (OpenAI's response_format) for a grammar
  async generate({ id, handle, prompt, options: { responseFormat, ...options } }) {
    const slot = get(handle);
    const engine = slot.engine;
    const grammar = await responseFormatGrammar(responseFormat);
    slot.abort = new AbortController();
    let n = 0;
    const t0 = performance.now();
    let first = null;           // when the first token was ready: prefill's end
    const run = engine.generate(prompt, { ...options, grammar, signal: slot.abort.signal });
    for await (const token of run) {
      n++;
      first ??= performance.now();
      postMessage({ id, token: engine.experts.readsRouting ? { ...token, usage: engine.experts.usage } : token });
    }
    const end = performance.now();
    return { tokens: n, seconds: (end - t0) / 1000, finishReason: run.finishReason,
             promptTokens: run.promptTokens, completionTokens: run.completionTokens,
             prefillSeconds: ((first ?? end) - t0) / 1000, decodeSeconds: (end - (first ?? end)) / 1000 };
  },
  async stats({ handle }) {
    return { stats: get(handle).engine.expertStats() };
  },
  async speed({ handle, options }) {
    return { speed: await measureSpeed(get(handle).engine, options) };
  },
  async unload({ handle }) {
    const slot = get(handle);
    engines.delete(handle);
    slot.abort?.abort();
    slot.engine.unload();
    return {};
  },
  async stop({ handle }) {
    get(handle).abort?.abort();
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
