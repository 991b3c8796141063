// webmoe in the browser: the public API (npm: `webmoe`). The engine runs in a Web Worker (worker.js).
//
//   import * as webmoe from "webmoe";
//   const engine = await webmoe.load("https://host/models/NAME/" or "hf://ORG/REPO@REV", { onProgress });
//   const ids = await engine.tokenize("text" or messages);        // as the native tokenizer encodes it
//   const logits = await engine.logits([1, 2, 3]);               // Float32Array [T * vocab]
//   for await (const t of engine.generate(messages, { maxNewTokens: 64, temperature: 0.7 })) ...
//                                         // options also: topP, seed, stop, responseFormat (OpenAI's
//                                         // response_format: {type: "json_object"} or {type: "json_schema",
//                                         // json_schema: {name, schema}}: the text is JSON that matches it)
//   engine.stop();                                                 // ends a running generate()
//   await engine.expertStats();                                    // cache hits, misses, uploads, usage
//   await engine.unload();                                         // frees its GPU memory
// load options: onProgress({stage: "download"|"compile"|"upload", ...}), onDeviceLost(message), worker (a
// Worker the app made that imports "webmoe/worker"), and the engine's options (options.js): expertCacheBytes,
// memoryCacheBytes, pinnedExperts, observeRouting, maxSeqLen, expertsOnDemand, opfsBudgetBytes, hotExperts,
// backgroundDownload, storage ("auto" | "opfs" | "memory"), digest
//   engine.ephemeral                                               // null, or why nothing of the model is
//                                         // kept in the browser (it is fetched again on the next visit)
//   await webmoe.listCached(); await webmoe.deleteCached(id);      // models kept in OPFS
//   await engine.chat.completions.create({messages, max_tokens, temperature, top_p, seed, stop, stream,
//                                         stream_options, response_format})
//                                         // OpenAI's shape: a chat.completion, or with stream: true an
//                                         // async iterator of chat.completion.chunk objects; usage.extra has
//                                         // prefill_tokens_per_s and decode_tokens_per_s
// Errors are the classes errors.js exports, each with a `code`.
import { WorkerError, revive } from "./errors.js";
import { env, manifestUrl } from "./hub.js";

export { env };
export * from "./errors.js";

let seq = 0;

// The engine's worker: beside this module (a bundler finds it by this very expression and bundles it), or,
// when this module was imported from another origin (a CDN), started from a same-origin blob that imports it.
// The second URL is built from a variable: a bundler copies the file a literal `new URL("...", import.meta.url)`
// names as an asset, which would ship the worker twice.
const WORKER = "./worker.js";
function startWorker() {
  if (new URL(import.meta.url).origin === self.location.origin) {
    return new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  }
  const url = new URL(WORKER, import.meta.url);
  const blob = new Blob([`import ${JSON.stringify(url.href)};`], { type: "text/javascript" });
  return new Worker(URL.createObjectURL(blob), { type: "module" });
}

// where Vite's dev server puts the dependencies it pre-bundles (worker.js is not among them)
const PREBUNDLED = /\/\.vite\/deps\//;

class WorkerClient {
  constructor(worker) {
    this.worker = worker;
    this.pending = new Map();
    // a worker whose modules fail to load never answers: fail every call with what happened instead
    this.worker.onerror = (ev) => {
      ev.preventDefault?.();
      const why = PREBUNDLED.test(import.meta.url)
        ? "Vite's dev server pre-bundled webmoe into node_modules/.vite/deps/, away from its worker: add " +
          "optimizeDeps: { exclude: [\"webmoe\"] } to vite.config."
        : "Check that worker.js is served beside webmoe.js (a bundler emits it), or from a CDN that sends " +
          "Access-Control-Allow-Origin.";
      this.broken = new WorkerError("webmoe's worker could not start" + (ev.message ? ` (${ev.message})` : "") +
                                    `: its module failed to load. ${why}`);
      for (const p of this.pending.values()) p.reject(this.broken);
      this.pending.clear();
    };
    this.lostListeners = new Map();     // engine handle -> onDeviceLost
    this.worker.onmessage = ({ data }) => {
      if (data.event === "device-lost") {
        this.lostListeners.get(data.handle)?.(data.message);
        this.lostListeners.delete(data.handle);
        return;
      }
      const p = this.pending.get(data.id);
      if (!p) return;
      if (data.progress) p.onProgress?.(data.progress);
      if (data.token) p.onToken?.(data.token);
      if (data.done) {
        this.pending.delete(data.id);
        if (data.error) p.reject(revive(data.name, data.error));
        else p.resolve(data.result);
      }
    };
  }

  call(op, args = {}, handlers = {}) {
    const id = ++seq;
    if (this.broken) return Promise.reject(this.broken);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...handlers });
      this.worker.postMessage({ id, op, ...args });
    });
  }
}


class BrowserEngine {
  constructor(client, info) {
    this.client = client;
    Object.assign(this, info);
    this.chat = { completions: { create: (request) => chatCompletion(this, request) } };
  }

  // A call to this engine in the worker (several may be loaded there).
  call(op, args = {}, handlers = {}) {
    return this.client.call(op, { handle: this.handle, ...args }, handlers);
  }

  // Token ids of a prompt: text, or chat messages rendered with the model's template.
  async tokenize(prompt) {
    return (await this.call("tokenize", { prompt })).ids;
  }

  async logits(ids) {
    return (await this.call("logits", { ids: Array.from(ids) })).logits;
  }

  // An async iterator of {id, text}; stop() ends it early.
  async *generate(prompt, options = {}) {
    const queue = [];
    let wake = null;
    let finished = false;
    let failure = null;
    const done = this.call("generate", { prompt, options }, {
      onToken: (t) => { queue.push(t); wake?.(); },
    }).then((r) => { this.lastStats = r; }, (e) => { failure = e; }).finally(() => { finished = true; wake?.(); });
    for (;;) {
      if (queue.length) { yield queue.shift(); continue; }
      if (finished) break;
      await new Promise((r) => { wake = r; });
      wake = null;
    }
    await done;
    if (failure) throw failure;
  }

  stop() {
    return this.call("stop");
  }

  // Frees the model's GPU memory now; the engine cannot be used after.
  async unload() {
    this.client.lostListeners.delete(this.handle);
    await this.call("unload");
  }

  // The expert cache's statistics (per layer and total), routing usage, and the in-memory shard cache.
  async expertStats() {
    return (await this.call("stats")).stats;
  }

  // Prefill and decode speed on this device, and where a decoded token's time goes (speed.js); it decodes
  // random tokens into the model's KV cache, so call it between generations. options: prompt (tokens, 128),
  // tokens (decoded per repetition, 32), repeats (3), profile (GPU time per kernel), seed.
  async speed(options = {}) {
    return (await this.call("speed", { options })).speed;
  }
}

// engine.chat.completions.create, as OpenAI's clients call it (and as `webmoe serve`'s /v1 answers): the
// request's sampling fields map to generate()'s options; unknown fields are refused, not ignored.
const CHAT_FIELDS = new Set(["messages", "model", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                             "temperature", "top_p", "seed", "stop", "response_format"]);

// OpenAI's usage, and in `extra` the speeds WebLLM reports: prompt tokens over the time to the first token,
// and the tokens after the first over the time after it.
function usageOf(stats) {
  const { promptTokens: p, completionTokens: c, prefillSeconds, decodeSeconds } = stats;
  return { prompt_tokens: p, completion_tokens: c, total_tokens: p + c,
           extra: { prefill_tokens_per_s: prefillSeconds > 0 ? p / prefillSeconds : null,
                    decode_tokens_per_s: c > 1 && decodeSeconds > 0 ? (c - 1) / decodeSeconds : null,
                    time_to_first_token_s: prefillSeconds } };
}

function chatCompletion(engine, request) {
  const unknown = Object.keys(request || {}).filter((k) => !CHAT_FIELDS.has(k));
  if (unknown.length) return Promise.reject(new TypeError(`unsupported chat completion fields: ${unknown.join(", ")}`));
  const { messages, stream = false, stop } = request;
  const includeUsage = !!request.stream_options?.include_usage;
  if (request.stream_options != null && !stream) return Promise.reject(new TypeError("stream_options needs stream: true"));
  const options = { maxNewTokens: request.max_completion_tokens ?? request.max_tokens ?? 256,
                    temperature: request.temperature ?? 1, topP: request.top_p ?? 1, seed: request.seed,
                    stop: stop == null ? [] : [].concat(stop), responseFormat: request.response_format };
  const id = `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const created = Math.floor(Date.now() / 1000);
  const model = engine.family;
  const chunk = (delta, finish = null) => ({ id, object: "chat.completion.chunk", created, model,
                                             choices: [{ index: 0, delta, finish_reason: finish }] });
  if (stream) {
    return (async function* () {
      yield chunk({ role: "assistant", content: "" });
      for await (const t of engine.generate(messages, options)) yield chunk({ content: t.text });
      yield chunk({}, engine.lastStats.finishReason);
      // as OpenAI: with include_usage, one more chunk with no choices and the usage
      if (includeUsage) yield { id, object: "chat.completion.chunk", created, model, choices: [], usage: usageOf(engine.lastStats) };
    })();
  }
  return (async () => {
    let text = "";
    for await (const t of engine.generate(messages, options)) text += t.text;
    return { id, object: "chat.completion", created, model, usage: usageOf(engine.lastStats),
             choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: engine.lastStats.finishReason }] };
  })();
}

// One client per worker: the module's own (started on first use) or one the app passes as `worker`.
let shared = null;
const clients = new WeakMap();
function client(worker) {
  if (!worker) return (shared ||= new WorkerClient(startWorker()));
  if (!clients.has(worker)) clients.set(worker, new WorkerClient(worker));
  return clients.get(worker);
}

// source: a manifest's URL, its folder's URL, or hf://ORG/REPO[@REVISION] (hub.js).
export async function load(source, { onProgress, onDeviceLost, worker, ...options } = {}) {
  const url = manifestUrl(source, self.location.href);
  // Persistent storage keeps the model in OPFS under storage pressure. Only a page may ask for it
  // (StorageManager.persist is not exposed in workers, where the loader runs); the browser may decline.
  if (options.storage !== "memory") await self.navigator?.storage?.persist?.().catch(() => false);
  const c = client(worker);
  const info = await c.call("load", { manifestUrl: url, options }, { onProgress });
  if (onDeviceLost) c.lostListeners.set(info.handle, onDeviceLost);
  return new BrowserEngine(c, info);
}

export async function listCached({ worker } = {}) {
  return (await client(worker).call("list")).models;
}

export async function deleteCached(id, { worker } = {}) {
  await client(worker).call("delete", { modelId: id });
}
