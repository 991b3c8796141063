// webmoe in the browser: the public API. The engine runs in a Web Worker (worker.js).
//
//   import * as webmoe from "/web/webmoe.js";
//   const engine = await webmoe.load("/models/NAME/manifest.json", { onProgress });
//   const ids = await engine.tokenize("text" or messages);        // as the native tokenizer encodes it
//   const logits = await engine.logits([1, 2, 3]);               // Float32Array [T * vocab]
//   for await (const t of engine.generate(messages, { maxNewTokens: 64, temperature: 0.7 })) ...
//   engine.stop();                                                 // ends a running generate()
//   await engine.expertStats();                                    // cache hits, misses, uploads, usage
//   engine.unload();                                               // frees its GPU memory
// load options: onProgress({stage: "download"|"compile"|"upload", ...}), onDeviceLost(message), expertCacheBytes,
// memoryCacheBytes, pinnedExperts, observeRouting, maxSeqLen, expertsOnDemand, opfsBudgetBytes, hotExperts,
// backgroundDownload, storage ("auto" | "opfs" | "memory")
//   engine.ephemeral                                               // null, or why nothing of the model is
//                                         // kept in the browser (it is fetched again on the next visit)
//   await webmoe.listCached(); await webmoe.deleteCached(id);      // models kept in OPFS
//   await engine.chat.completions.create({messages, max_tokens, temperature, top_p, seed, stop})
//                                         // OpenAI's shape: a chat.completion, or with stream: true an
//                                         // async iterator of chat.completion.chunk objects

let seq = 0;

class WorkerClient {
  constructor() {
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    this.pending = new Map();
    // a worker whose modules fail to load never answers: fail every call with what happened instead
    this.worker.onerror = (ev) => {
      ev.preventDefault?.();
      this.broken = new Error("webmoe's worker could not start" + (ev.message ? ` (${ev.message})` : "") +
                              ": one of its modules failed to load. Serve the page with `webmoe serve`, which " +
                              "also sends the npm modules it needs, or reinstall them (npm ci in web/).");
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
        if (data.error) {
          const err = new Error(data.error);
          err.name = data.name || "Error";
          p.reject(err);
        } else p.resolve(data.result);
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
}

// engine.chat.completions.create, as OpenAI's clients call it (and as `webmoe serve`'s /v1 answers): the
// request's sampling fields map to generate()'s options; unknown fields are refused, not ignored.
const CHAT_FIELDS = new Set(["messages", "model", "stream", "max_tokens", "max_completion_tokens", "temperature",
                             "top_p", "seed", "stop"]);

function chatCompletion(engine, request) {
  const unknown = Object.keys(request || {}).filter((k) => !CHAT_FIELDS.has(k));
  if (unknown.length) return Promise.reject(new TypeError(`unsupported chat completion fields: ${unknown.join(", ")}`));
  const { messages, stream = false, stop } = request;
  const options = { maxNewTokens: request.max_completion_tokens ?? request.max_tokens ?? 256,
                    temperature: request.temperature ?? 1, topP: request.top_p ?? 1, seed: request.seed,
                    stop: stop == null ? [] : [].concat(stop) };
  const id = `chatcmpl-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const created = Math.floor(Date.now() / 1000);
  const model = engine.family;
  const chunk = (delta, finish = null) => ({ id, object: "chat.completion.chunk", created, model,
                                             choices: [{ index: 0, delta, finish_reason: finish }] });
  const usage = () => ({ prompt_tokens: engine.lastStats.promptTokens, completion_tokens: engine.lastStats.completionTokens,
                         total_tokens: engine.lastStats.promptTokens + engine.lastStats.completionTokens });
  if (stream) {
    return (async function* () {
      yield chunk({ role: "assistant", content: "" });
      for await (const t of engine.generate(messages, options)) yield chunk({ content: t.text });
      yield chunk({}, engine.lastStats.finishReason);
    })();
  }
  return (async () => {
    let text = "";
    for await (const t of engine.generate(messages, options)) text += t.text;
    return { id, object: "chat.completion", created, model, usage: usage(),
             choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: engine.lastStats.finishReason }] };
  })();
}

let shared = null;
const client = () => (shared ||= new WorkerClient());

export async function load(manifestUrl, { onProgress, onDeviceLost, ...options } = {}) {
  const url = new URL(manifestUrl, location.href).href;
  const info = await client().call("load", { manifestUrl: url, options }, { onProgress });
  if (onDeviceLost) client().lostListeners.set(info.handle, onDeviceLost);
  return new BrowserEngine(client(), info);
}

export async function listCached() {
  return (await client().call("list")).models;
}

export async function deleteCached(id) {
  await client().call("delete", { modelId: id });
}
