// Package shards in the Origin Private File System: downloaded once with bounded concurrency, retries and
// HTTP Range resume, verified by sha256 before they count, re-fetched if they fail their hash later.
// Layout: OPFS /webmoe/<model id>/{state.json, <shard>, <shard>.part}. state.json marks a model complete
// only when every shard has been verified. Where the browser cannot keep the model (no OPFS, as in some
// private windows; a quota or OPFS budget below its dense shards and one expert; a write the quota refuses),
// shards are fetched into memory instead, verified the same way, and nothing is stored: the model runs,
// and is downloaded again on the next visit (`ephemeral` says why).

import { PackageError, QuotaError } from "./errors.js";
import { readManifest, sha256Hex } from "./manifest.js";
import { TransferQueue } from "./transfers.js";

export { QuotaError };
const ROOT = "webmoe";

async function rootDir() {
  if (!navigator.storage?.getDirectory) throw new Error("this browser has no Origin Private File System");
  return (await navigator.storage.getDirectory()).getDirectoryHandle(ROOT, { create: true });
}

export async function modelId(manifestUrl) {
  return (await sha256Hex(new TextEncoder().encode(manifestUrl))).slice(0, 16);
}

async function readJson(dir, name) {
  try {
    return JSON.parse(await (await (await dir.getFileHandle(name)).getFile()).text());
  } catch {
    return null;
  }
}

async function writeJson(dir, name, value) {
  const w = await (await dir.getFileHandle(name, { create: true })).createWritable();
  await w.write(JSON.stringify(value));
  await w.close();   // createWritable writes a swap file: the old state stays until close() succeeds
}

async function dirBytes(dir) {
  let n = 0;
  for await (const [, h] of dir.entries()) {
    if (h.kind !== "file") continue;
    // another tab (or the browser's swap files of a writable) may remove a file while we count
    n += await h.getFile().then((f) => f.size, (err) => { if (err?.name === "NotFoundError") return 0; throw err; });
  }
  return n;
}

// [{id, url, name, bytes, complete}] for every model in OPFS.
export async function listCached() {
  const root = await rootDir();
  const out = [];
  for await (const [id, h] of root.entries()) {
    if (h.kind !== "directory") continue;
    const state = (await readJson(h, "state.json")) || {};
    out.push({ id, url: state.url || null, name: state.name || id, bytes: await dirBytes(h), complete: !!state.complete });
  }
  return out;
}

export async function deleteCached(id) {
  await (await rootDir()).removeEntry(id, { recursive: true });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class ModelStore {
  // Reads and checks the manifest and what OPFS holds; fetchMissing() then downloads what the load needs.
  // options: onProgress({stage: "download", loaded, total, shards: {file: state}}), concurrency, retries, digest (the manifest's
  // sha256 to pin, as `webmoe info` prints it), expertsOnDemand (download only the dense and tokenizer
  // shards now; an expert shard is fetched, verified and stored the first time shard() asks for it),
  // opfsBudgetBytes (with expertsOnDemand: the most this model keeps in OPFS; the least recently used
  // expert shards leave it when a new one arrives, and are fetched again when needed), hotExperts (with
  // expertsOnDemand: fetch with the dense shards each MoE layer's most-used experts covering this share of
  // its routed tokens, from the package's routing_stats; those that fit the budget), storage ("auto": OPFS
  // while the browser lets this model keep what it needs, else memory only; "opfs": OPFS or a QuotaError;
  // "memory": never store anything)
  static async open(manifestUrl, options = {}) {
    const s = new ModelStore();
    s.url = new URL(manifestUrl, self.location.href).href;
    s.onProgress = options.onProgress || (() => {});
    s.concurrency = options.concurrency || 4;
    s.transfers = new TransferQueue(s.concurrency);          // the link: needed shards before those fetched ahead
    s.ahead = new Set();                                     // files being read ahead of need (prefetch, filling)
    s.memoryBytes = options.memoryBytes ?? 256 * 2 ** 20;   // in-memory LRU of verified shard bytes (paging)
    s.memory = new Map();                                    // file -> ArrayBuffer, oldest first
    s.memoryUsed = 0;
    s.memoryCounts = { hits: 0, misses: 0, evictions: 0 };
    s.reading = new Map();                                   // file -> Promise<ArrayBuffer> of a read under way
    s.reserved = 0;                                          // bytes of downloads under way (OPFS budget)
    s.roomWaiters = [];
    s.roomQueue = s.stateQueue = Promise.resolve();
    s.retries = options.retries ?? 4;
    s.storage = options.storage ?? "auto";
    s.ephemeral = s.storage === "memory" ? "memory-only storage was asked for" : null;   // why nothing is stored
    s.held = new Map();                                      // file -> ArrayBuffer fetched for the load, not stored
    s.expertsOnDemand = !!options.expertsOnDemand;
    s.opfsBudget = options.opfsBudgetBytes ?? Infinity;
    if (s.opfsBudget !== Infinity && !s.expertsOnDemand) {
      throw new QuotaError("an OPFS budget needs expertsOnDemand: a full download keeps every shard");
    }
    const r = await fetch(s.url, { cache: "no-cache" });
    if (!r.ok) throw new PackageError(`manifest ${s.url}: HTTP ${r.status}`);
    // before anything is stored or downloaded
    s.manifest = await readManifest(new Uint8Array(await r.arrayBuffer()), options.digest);
    // where shards come from: the manifest's folder, then the package's mirrors, in order; a source that
    // fails (HTTP error, network error, wrong bytes) is skipped for the rest of the load
    s.sources = [new URL(".", s.url).href, ...(s.manifest.mirrors || [])];
    s.failing = new Set();
    // per tier below the GPU: shard reads that OPFS served and fetches the network served
    s.tiers = { opfs: { reads: 0, bytes: 0, wait_s: 0, evictions: 0 },
                network: { fetches: 0, bytes: 0, wait_s: 0, failed_sources: 0, dropped: 0 } };
    s.id = await modelId(s.url);
    s.dir = null;                                            // the model's OPFS folder, where there is one
    if (!s.ephemeral) {
      try {
        s.dir = await (await rootDir()).getDirectoryHandle(s.id, { create: true });
      } catch (err) {
        if (s.storage === "opfs") throw err;
        s.keepNothing(`this browser gives the page no storage (${err?.message || err})`);
      }
    }
    const old = (s.dir && (await readJson(s.dir, "state.json"))) || {};
    s.state = { url: s.url, name: s.url.split("/").slice(-2, -1)[0], complete: false, verified: old.verified || {},
                used: old.used || {} };                          // expert shard -> when last read (ms)
    s.entries = new Map(s.manifest.shards.map((e) => [e.file, e]));
    const dense = s.manifest.shards.filter((e) => e.kind !== "expert").reduce((a, e) => a + e.size, 0);
    const largest = Math.max(0, ...s.manifest.shards.filter((e) => e.kind === "expert").map((e) => e.size));
    if (s.opfsBudget < dense + largest && !s.ephemeral) {
      const why = `an OPFS budget of ${mb(s.opfsBudget)} cannot hold this model's dense shards and one expert ` +
                  `(${mb(dense + largest)})`;
      if (s.storage === "opfs") throw new QuotaError(`${why}. Free space or delete cached models, or ask for a larger budget.`);
      s.keepNothing(why);
    }
    // the most-used experts (routing_stats) are fetched with the dense shards, within the budget (in
    // memory only: within the memory cache)
    let room = s.ephemeral ? s.memoryBytes : s.opfsBudget - dense;
    s.hot = new Set();
    for (const { file, size } of hotShards(s.manifest, options.hotExperts || 0)) {
      if (size > room) break;
      s.hot.add(file);
      room -= size;
    }
    s.status = {};
    s.loaded = 0;
    return s;
  }

  // From now on shards are fetched into memory and nothing more is written to OPFS (what it already holds
  // and has verified is still read). `why` is said to the user: the model is downloaded again next visit.
  keepNothing(why) {
    this.ephemeral ||= why;
  }

  async fileSize(name) {
    try {
      return (await (await this.dir.getFileHandle(name)).getFile()).size;
    } catch {
      return -1;
    }
  }

  // total: the bytes of the shards this load needs now (experts left on demand count once they are asked for)
  progress() {
    const total = this.manifest.shards.reduce((a, e) => a + (this.status[e.file] === "on demand" ? 0 : e.size), 0);
    this.onProgress({ stage: "download", loaded: this.loaded, total, shards: { ...this.status } });
  }

  // Downloads every shard not verified in OPFS (with expertsOnDemand: the dense and tokenizer shards).
  async fetchMissing() {
    const missing = [];
    for (const e of this.manifest.shards) {
      if (this.dir && this.state.verified[e.file] === e.sha256 && (await this.fileSize(e.file)) === e.size) {
        this.status[e.file] = "cached";
        this.loaded += e.size;
      } else if (this.expertsOnDemand && e.kind === "expert" && !this.hot.has(e.file)) {
        this.status[e.file] = "on demand";
      } else {
        delete this.state.verified[e.file];
        missing.push(e);
        this.status[e.file] = "queued";
      }
    }
    this.progress();
    if (!missing.length) {
      await this.saveState();
      return;
    }
    let need = 0;
    for (const e of missing) need += e.size - Math.max(0, await this.fileSize(`${e.file}.part`));
    if (!this.ephemeral) await this.checkQuota(need);
    // On the first failure the other downloads finish the shard they hold and take no more; the load
    // rejects only when none of them still writes to OPFS. Kept in memory only, each shard waits in `held`
    // for the load to read it once.
    const queue = [...missing];
    let failed = null;
    const worker = async () => {
      while (queue.length && !failed) {
        const e = queue.shift();
        try {
          const data = await this.download(e);
          if (this.ephemeral) this.held.set(e.file, data);
        } catch (err) {
          // any write to OPFS may be the one that meets the quota: the same message wherever it happens
          failed ||= err?.name === "QuotaExceededError" ? quotaError(need, 0) : err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, queue.length) }, worker));
    if (failed) throw failed;
    await this.saveState();
  }

  // Whether the browser lets this model store `need` more bytes; if not, a QuotaError (storage "opfs") or
  // memory only from now on. A state.json written first marks the model incomplete while it downloads.
  async checkQuota(need) {
    if (navigator.storage.persist) await navigator.storage.persist().catch(() => false);
    const { quota = Infinity, usage = 0 } = await navigator.storage.estimate();
    let refused = need > quota - usage ? quotaError(need, quota - usage) : null;
    if (!refused) {
      try {
        await writeJson(this.dir, "state.json", this.state);   // not complete while anything is missing
      } catch (err) {
        if (err?.name !== "QuotaExceededError") throw err;
        refused = quotaError(need, 0);                        // the estimate was optimistic
      }
    }
    if (refused && this.storage === "opfs") throw refused;
    if (refused) this.keepNothing(`this site may store ${mb(Math.max(0, quota - usage))} and the model needs ${mb(need)} more`);
  }

  // Writes state.json (one write at a time); the model is complete when every shard has been verified.
  saveState() {
    if (this.ephemeral) return Promise.resolve();
    const write = this.stateQueue.then(() => {
      this.state.complete = this.manifest.shards.every((e) => this.state.verified[e.file] === e.sha256);
      return writeJson(this.dir, "state.json", this.state);
    });
    this.stateQueue = write.catch(() => {});
    return write;
  }

  // The first source not known to fail (all failing: the first one again, so retries go on).
  source() {
    return this.sources.find((u) => !this.failing.has(u)) ?? this.sources[0];
  }

  // Downloads one shard (into OPFS, or into memory when nothing is kept), verified, counted in the network
  // tier. Any source serves any shard: it is checked against its sha256 whatever its origin.
  async download(e) {
    const t0 = performance.now();
    const data = await this.fetchShard(e);
    const net = this.tiers.network;
    Object.assign(net, { fetches: net.fetches + 1, bytes: net.bytes + e.size,
                         wait_s: net.wait_s + (performance.now() - t0) / 1000, failed_sources: this.failing.size });
    return data;
  }

  async fetchShard(e) {
    let lastError;
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      const base = this.source();
      const url = new URL(e.file, base).href;
      let link;
      try {
        link = await this.transfers.enter(e.file, this.ahead.has(e.file));
      } catch (err) {                                              // Dropped: nobody wants it any more
        this.status[e.file] = "on demand";
        this.progress();
        throw err;
      }
      this.status[e.file] = attempt ? "retrying" : "downloading";
      let data = null;
      let failure = null;
      try {
        data = this.ephemeral ? await this.fetchIntoMemory(e, url, link.signal)
                              : await this.fetchIntoOpfs(e, url, link.signal);
      } catch (err) {
        failure = err;
      } finally {
        link.done();
      }
      if (failure && link.signal.aborted) {                        // dropped under way: what arrived is kept
        this.tiers.network.dropped++;
        this.status[e.file] = "on demand";
        this.progress();
        throw link.signal.reason;
      }
      if (!failure) {
        this.status[e.file] = this.ephemeral ? "in memory" : "done";
        this.progress();
        return data;
      }
      lastError = failure;
      if (failure?.name === "QuotaExceededError") {
        // the estimate was optimistic (or another tab took the space): memory only from now on, or (storage
        // "opfs") give up with the same message wherever it happens
        if (this.storage === "opfs") {
          this.status[e.file] = "error";
          this.progress();
          throw quotaError(e.size, 0);
        }
        this.keepNothing(`the browser refused to store more of the model (${failure.message})`);
        attempt--;
        continue;
      }
      this.status[e.file] = "retrying";
      this.progress();
      if (this.failing.size < this.sources.length - 1) {
        this.failing.add(base);                                 // the next source, at once
        attempt--;
      } else {
        await sleep(200 * 2 ** attempt);
      }
    }
    this.status[e.file] = "error";
    this.progress();
    const kept = this.ephemeral ? "" : ": what has arrived is kept and the download resumes";
    throw new PackageError(`could not download ${e.file} from ${this.sources.length > 1 ? "any source" : new URL(this.sources[0]).host} ` +
                           `(${lastError?.message || lastError}). Check the network connection and load again${kept}.`);
  }

  // One try at a shard into <file>.part, resuming what is there with a Range request, verified, then moved
  // into place. A QuotaExceededError leaves nothing behind; other failures keep the bytes that arrived.
  async fetchIntoOpfs(e, url, signal) {
    let writable = null;
    try {
      // creating the file can already exceed the quota (another download holds the space)
      const part = await this.dir.getFileHandle(`${e.file}.part`, { create: true });
      let have = (await part.getFile()).size;
      if (have > e.size) have = 0;
      const before = have;
      if (have < e.size) {
        const resp = await fetch(url, { cache: "no-store", signal,
                                        headers: have ? { Range: `bytes=${have}-`, "If-Range": `"${e.sha256}"` } : {} });
        if (resp.status === 200) have = 0;
        else if (resp.status !== 206 || !(resp.headers.get("Content-Range") || "").startsWith(`bytes ${have}-`)) {
          throw new Error(`${e.file}: HTTP ${resp.status}`);
        }
        writable = await part.createWritable({ keepExistingData: have > 0 });
        if (have > 0) await writable.seek(have); else await writable.truncate(0);
        this.loaded -= before - have;
        await this.receive(resp, async (chunk) => { await writable.write(chunk); have += chunk.byteLength; });
        await writable.close();
        writable = null;
      }
      this.status[e.file] = "verifying";
      const data = await (await part.getFile()).arrayBuffer();
      if ((await sha256Hex(data)) !== e.sha256) {
        await this.dir.removeEntry(`${e.file}.part`);
        this.loaded -= have;
        throw new Error(`${e.file}: sha256 mismatch after download`);
      }
      await part.move(e.file);
      this.state.verified[e.file] = e.sha256;
      return data;
    } catch (err) {
      if (err?.name === "QuotaExceededError") {
        if (writable) await writable.abort().catch(() => {});
        await this.dir.removeEntry(`${e.file}.part`).catch(() => {});
      } else if (writable) {
        await writable.close().catch(() => {});                   // keep the bytes that arrived, for Range resume
      }
      throw err;
    }
  }

  // One try at a shard into memory, verified; nothing is stored.
  async fetchIntoMemory(e, url, signal) {
    const resp = await fetch(url, { cache: "no-store", signal });
    if (resp.status !== 200) throw new Error(`${e.file}: HTTP ${resp.status}`);
    const data = new Uint8Array(e.size);
    let have = 0;
    try {
      await this.receive(resp, (chunk) => {
        if (have + chunk.byteLength > e.size) throw new Error(`${e.file}: more bytes than the manifest says`);
        data.set(chunk, have);
        have += chunk.byteLength;
      });
      this.status[e.file] = "verifying";
      if (have !== e.size || (await sha256Hex(data)) !== e.sha256) throw new Error(`${e.file}: sha256 mismatch after download`);
    } catch (err) {
      this.loaded -= have;
      throw err;
    }
    return data.buffer;
  }

  // Feeds a response's body to `sink` chunk by chunk, counting it in the download's progress.
  async receive(resp, sink) {
    const reader = resp.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      await sink(value);
      this.loaded += value.byteLength;
      this.progress();
    }
  }

  // Before `incoming` is stored: removes the least recently used expert shards from OPFS until the
  // model's verified shards, the downloads under way and it fit the budget, then reserves its bytes (given
  // back by unreserve()). Runs one at a time; waits for downloads under way when evicting is not enough.
  makeRoom(incoming) {
    if (this.opfsBudget === Infinity) return Promise.resolve();
    const run = this.roomQueue.then(() => this.makeRoomNow(incoming));
    this.roomQueue = run.catch(() => {});
    return run;
  }

  async makeRoomNow(incoming) {
    for (;;) {
      const stored = this.manifest.shards.filter((e) => this.state.verified[e.file] === e.sha256 && e !== incoming);
      let bytes = stored.reduce((a, e) => a + e.size, 0) + this.reserved + incoming.size;
      const victims = stored.filter((e) => e.kind === "expert" && !this.reading.has(e.file))
        .sort((a, b) => (this.state.used[a.file] || 0) - (this.state.used[b.file] || 0));
      for (const e of victims) {
        if (bytes <= this.opfsBudget) break;
        await this.dir.removeEntry(e.file).catch(() => {});
        delete this.state.verified[e.file];
        bytes -= e.size;
        this.loaded -= e.size;
        this.status[e.file] = "on demand";
        this.tiers.opfs.evictions++;
      }
      if (bytes <= this.opfsBudget || this.reserved === 0) break;
      await new Promise((resolve) => this.roomWaiters.push(resolve));      // a download under way ends
    }
    this.reserved += incoming.size;
  }

  unreserve(e) {
    if (this.opfsBudget === Infinity) return;
    this.reserved -= e.size;
    this.roomWaiters.splice(0).forEach((wake) => wake());
  }

  memoryStats() {
    return { ...this.memoryCounts, bytes: this.memoryUsed, budget: this.memoryBytes, files: this.memory.size };
  }

  // {opfs: {reads, bytes, wait_s, evictions}, network: {fetches, bytes, wait_s, failed_sources}}
  tierStats() {
    const round = (t) => ({ ...t, wait_s: Math.round(t.wait_s * 1e6) / 1e6 });
    return { opfs: round(this.tiers.opfs), network: round(this.tiers.network) };
  }

  // Whether a shard's bytes are in memory or OPFS (reading it needs no network).
  isLocal(file) {
    const e = this.entries.get(file);
    return this.memory.has(file) || this.state.verified[file] === e?.sha256;
  }

  // Starts reading a shard into the in-memory LRU (from OPFS, else the network) without waiting for it: a
  // later shard() of the same file joins the read. Failures are left for that shard() to meet again.
  // ahead: the shard is wanted ahead of need (a prediction): its transfer waits behind needed ones, and
  // drop() can cancel it before it starts.
  warm(file, { ahead = false } = {}) {
    if (!this.memory.has(file)) this.shard(file, { memo: true, ahead }).catch(() => {});
  }

  // A shard warmed ahead of need turned out not to be needed: its transfer is dropped, waiting or under way.
  drop(file) {
    this.transfers.drop(file);
  }

  // The shard is needed now: a read of it under way ahead of need is promoted.
  needNow(file) {
    if (this.ahead.delete(file)) this.transfers.need(file);
  }

  // Downloads the expert shards that are not in OPFS, one at a time, while the model fits its OPFS budget;
  // stops at close(). Shards the router asks for meanwhile join the download of the same file.
  async fillInBackground() {
    for (const e of this.manifest.shards) {
      if (this.closed || this.ephemeral) return;
      if (this.state.verified[e.file] === e.sha256) continue;
      const stored = this.manifest.shards.reduce((a, s) => a + (this.state.verified[s.file] === s.sha256 ? s.size : 0), 0);
      if (stored + e.size > this.opfsBudget) return;
      await this.read(e.file, { ahead: true }).catch(() => {});
    }
  }

  close() {
    this.closed = true;
  }

  // The verified bytes of a shard, from the in-memory LRU (memo: true keeps them there), else OPFS, else
  // HTTP. A shard that fails its hash in OPFS is deleted and fetched again.
  async shard(file, { memo = false, ahead = false } = {}) {
    if (this.memory.has(file)) {
      const data = this.memory.get(file);
      this.memory.delete(file);
      this.memory.set(file, data);
      this.memoryCounts.hits++;
      return data;
    }
    const data = await this.read(file, { ahead });
    if (memo && !this.memory.has(file)) {        // (a read of the same file that ran alongside may have put it there)
      this.memoryCounts.misses++;
      this.memory.set(file, data);
      this.memoryUsed += data.byteLength;
      for (const [old, buf] of this.memory) {
        if (this.memoryUsed <= this.memoryBytes || old === file) break;
        this.memory.delete(old);
        this.memoryUsed -= buf.byteLength;
        this.memoryCounts.evictions++;
      }
    }
    return data;
  }

  // One read per file at a time: reads of a file already being read (or downloaded) join it. ahead: this
  // read is wanted ahead of need (its transfer waits behind needed ones, and drop() can cancel it); a read
  // started ahead of need is promoted when a caller that needs it joins.
  read(file, { ahead = false } = {}) {
    if (!ahead) this.needNow(file);
    if (!this.reading.has(file)) {
      if (ahead) this.ahead.add(file);
      this.reading.set(file, this.readOnce(file).finally(() => {
        this.reading.delete(file);
        this.ahead.delete(file);
      }));
    }
    return this.reading.get(file);
  }

  async readOnce(file) {
    const e = this.entries.get(file);
    if (!e) throw new Error(`shard ${file} is not in the manifest`);
    if (e.kind === "expert") this.state.used[file] = Date.now();
    const held = this.held.get(file);            // fetched for this load without a place to keep it: read once
    if (held) {
      this.held.delete(file);
      return held;
    }
    const t0 = performance.now();
    try {
      const data = await (await (await this.dir.getFileHandle(file)).getFile()).arrayBuffer();
      if ((await sha256Hex(data)) === e.sha256) {
        Object.assign(this.tiers.opfs, { reads: this.tiers.opfs.reads + 1, bytes: this.tiers.opfs.bytes + e.size,
                                         wait_s: this.tiers.opfs.wait_s + (performance.now() - t0) / 1000 });
        return data;
      }
    } catch { /* missing (or no OPFS): fetch below */ }
    if (this.ephemeral) {                        // nothing is stored: the bytes go to the caller only
      const data = await this.download(e);
      if (e.kind === "expert") {
        this.loaded -= e.size;
        this.status[file] = "on demand";
      }
      return data;
    }
    await this.makeRoom(e);
    try {
      await this.dir.removeEntry(file).catch(() => {});
      delete this.state.verified[file];
      await this.saveState();
      if (this.status[file] !== "on demand") this.loaded -= e.size;
      const data = await this.download(e);
      await this.saveState();
      return data;
    } finally {
      this.unreserve(e);
    }
  }
}

// The expert shards worth fetching up front, most used first: per MoE layer, the fewest most-used experts
// (routing_stats, as `webmoe analyze --into-package` writes them) whose routed tokens reach `share` of the
// layer's, ties going to the lower expert number. -> [{file, size, share}]
export function hotShards(manifest, share) {
  const usage = manifest.routing_stats?.usage;
  if (!usage || !(share > 0)) return [];
  const out = [];
  for (const [layer, counts] of Object.entries(usage)) {
    const total = counts.reduce((a, n) => a + n, 0);
    const order = counts.map((n, e) => [n, e]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    let covered = 0;
    for (const [n, e] of order) {
      if (n === 0 || covered >= share * total) break;
      covered += n;
      const file = manifest.experts[`${layer}_${e}`].shard;
      out.push({ file, size: manifest.shards.find((x) => x.file === file).size, share: n / total });
    }
  }
  return out.sort((a, b) => b.share - a.share);
}

function quotaError(need, free) {
  return new QuotaError(`Not enough browser storage for this model: it needs ${mb(need)} more than this site ` +
                        `may use (${mb(Math.max(0, free))} free). Free space or delete cached models.`);
}

function mb(n) {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}
