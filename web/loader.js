// A model's shards for the engine: kept in the Origin Private File System (opfs.js) within an OPFS budget,
// fetched when missing (shard_fetch.js: mirrors, retries, Range resume, the link's queue), held in memory
// while paging (memory_cache.js), verified by sha256 before they count and re-fetched if they fail their
// hash later. Layout: OPFS /webmoe/<model id>/{state.json, <shard>, <shard>.part}. state.json marks a model complete
// only when every shard has been verified. Where the browser cannot keep the model (no OPFS, as in some
// private windows; a quota or OPFS budget below its dense shards and one expert; a write the quota refuses),
// shards are fetched into memory instead, verified the same way, and nothing is stored: the model runs,
// and is downloaded again on the next visit (`ephemeral` says why).

import { PackageError, QuotaError } from "./errors.js";
import { readManifest, sha256Hex } from "./manifest.js";
import { MemoryCache } from "./memory_cache.js";
import { fileSize, modelId, readJson, rootDir, writeJson } from "./opfs.js";
import { ShardFetcher } from "./shard_fetch.js";
import { mib } from "./units.js";

export { QuotaError };
export { deleteCached, listCached } from "./opfs.js";

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
    s.ahead = new Set();                                     // files being read ahead of need (prefetch, filling)
    s.memory = new MemoryCache(options.memoryBytes ?? 256 * 2 ** 20);   // verified shard bytes (paging)
    s.reading = new Map();                                   // file -> Promise<ArrayBuffer> of a read under way
    s.reserved = 0;                                          // bytes of downloads under way (OPFS budget)
    s.roomWaiters = [];
    s.roomQueue = s.stateQueue = Promise.resolve();
    s.storage = options.storage ?? "auto";
    s.ephemeral = s.storage === "memory" ? "memory-only storage was asked for" : null;   // why nothing is stored
    s.held = new Map();                                      // file -> ArrayBuffer fetched for the load, not stored
    s.expertsOnDemand = !!options.expertsOnDemand;
    s.opfsBudget = options.opfsBudgetBytes ?? Infinity;
    if (s.opfsBudget !== Infinity && !s.expertsOnDemand) {
      throw new QuotaError("an OPFS budget needs expertsOnDemand: a full download keeps every shard");
    }
    let r;
    try {
      r = await fetch(s.url, { cache: "no-cache" });
    } catch (err) {      // offline, refused, or another origin that sends no CORS header
      throw new PackageError(`could not fetch the manifest ${s.url} (${err?.message || err}): check the address and the ` +
                             "network; a package on another origin must be served with Access-Control-Allow-Origin");
    }
    if (!r.ok) throw new PackageError(`manifest ${s.url}: HTTP ${r.status}`);
    // before anything is stored or downloaded
    s.manifest = await readManifest(new Uint8Array(await r.arrayBuffer()), options.digest);
    // where shards come from: the manifest's folder, then the package's mirrors, in order; a source that
    // fails (HTTP error, network error, wrong bytes) is skipped for the rest of the load
    s.fetcher = new ShardFetcher({
      sources: [new URL(".", s.url).href, ...(s.manifest.mirrors || [])], retries: options.retries ?? 4,
      concurrency: s.concurrency,
      onStatus: (file, status, tell = true) => { s.status[file] = status; if (tell) s.progress(); },
      onBytes: (n) => { s.loaded += n; s.progress(); } });
    s.opfs = { reads: 0, bytes: 0, wait_s: 0, evictions: 0 };   // shard reads that OPFS served
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
      const why = `an OPFS budget of ${mib(s.opfsBudget)} cannot hold this model's dense shards and one expert ` +
                  `(${mib(dense + largest)})`;
      if (s.storage === "opfs") throw new QuotaError(`${why}. Free space or delete cached models, or ask for a larger budget.`);
      s.keepNothing(why);
    }
    // the most-used experts (routing_stats) are fetched with the dense shards, within the budget (in
    // memory only: within the memory cache)
    let room = s.ephemeral ? s.memory.budget : s.opfsBudget - dense;
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

  // total: the bytes of the shards this load needs now (experts left on demand count once they are asked for)
  progress() {
    const total = this.manifest.shards.reduce((a, e) => a + (this.status[e.file] === "on demand" ? 0 : e.size), 0);
    this.onProgress({ stage: "download", loaded: this.loaded, total, shards: { ...this.status } });
  }

  // Downloads every shard not verified in OPFS (with expertsOnDemand: the dense and tokenizer shards).
  async fetchMissing() {
    const missing = [];
    for (const e of this.manifest.shards) {
      if (this.dir && this.state.verified[e.file] === e.sha256 && (await fileSize(this.dir, e.file)) === e.size) {
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
    for (const e of missing) need += e.size - Math.max(0, this.dir ? await fileSize(this.dir, `${e.file}.part`) : 0);
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
    if (refused) this.keepNothing(`this site may store ${mib(Math.max(0, quota - usage))} and the model needs ${mib(need)} more`);
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

  // Downloads one shard, verified: into OPFS, or into memory when nothing is kept (a write the quota
  // refuses: memory only from now on, or with storage "opfs" a QuotaError). Any source serves any shard.
  async download(e) {
    const { data, kept } = await this.fetcher.fetch(e, {
      ahead: () => this.ahead.has(e.file),
      place: () => (this.ephemeral ? null : this.dir),
      onQuota: (err) => {
        if (this.storage === "opfs") throw quotaError(e.size, 0);
        this.keepNothing(`the browser refused to store more of the model (${err.message})`);
      } });
    if (kept) this.state.verified[e.file] = e.sha256;
    return data;
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
        this.opfs.evictions++;
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
    return this.memory.stats();
  }

  // {opfs: {reads, bytes, wait_s, evictions}, network: {fetches, bytes, wait_s, failed_sources, dropped}}
  tierStats() {
    const round = (t) => ({ ...t, wait_s: Math.round(t.wait_s * 1e6) / 1e6 });
    return { opfs: round(this.opfs), network: round(this.fetcher.network) };
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
    this.fetcher.drop(file);
  }

  // The shard is needed now: a read of it under way ahead of need is promoted.
  needNow(file) {
    if (this.ahead.delete(file)) this.fetcher.need(file);
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
    const hit = this.memory.touch(file);
    if (hit) return hit;
    const data = await this.read(file, { ahead });
    if (memo) this.memory.put(file, data);       // (a read of the same file alongside may have put it there)
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
        Object.assign(this.opfs, { reads: this.opfs.reads + 1, bytes: this.opfs.bytes + e.size,
                                   wait_s: this.opfs.wait_s + (performance.now() - t0) / 1000 });
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
  return new QuotaError(`Not enough browser storage for this model: it needs ${mib(need)} more than this site ` +
                        `may use (${mib(Math.max(0, free))} free). Free space or delete cached models.`);
}
