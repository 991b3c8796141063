// Fetching shards over the network: from the manifest's folder or the package's mirrors (a source that
// fails is skipped for the rest of the load), with retries, HTTP Range resume of what already arrived in
// OPFS, every byte verified by sha256 before it counts, and every transfer waiting its turn in the link's
// queue (transfers.js: needed shards before those fetched ahead of need).
import { PackageError } from "./errors.js";
import { sha256Hex } from "./manifest.js";
import { TransferQueue } from "./transfers.js";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class ShardFetcher {
  // sources: base URLs in order; retries per shard; concurrency: transfers at once; onStatus(file, status,
  // tell) and onBytes(delta): what the download's progress shows (tell: false waits for the next event).
  constructor({ sources, retries = 4, concurrency = 4, onStatus, onBytes }) {
    Object.assign(this, { sources, retries, onStatus, onBytes });
    this.failing = new Set();
    this.wholeOnly = new Set();         // sources whose Range requests failed: whole files from them
    this.transfers = new TransferQueue(concurrency);
    this.network = { fetches: 0, bytes: 0, wait_s: 0, failed_sources: 0, dropped: 0 };
  }

  // The first source not known to fail (all failing: the first one again, so retries go on).
  source() {
    return this.sources.find((u) => !this.failing.has(u)) ?? this.sources[0];
  }

  // The shard is needed now: its transfer, waiting ahead of need, is promoted.
  need(file) {
    this.transfers.need(file);
  }

  // A shard fetched ahead of need is not needed after all: its transfer is dropped, waiting or under way.
  drop(file) {
    this.transfers.drop(file);
  }

  // One verified shard -> {data, kept}: into OPFS when place() gives a folder (kept: true), else into
  // memory. place() is asked at each try; a write the quota refuses calls onQuota(error), which throws to
  // give up or returns to go on (place() then says where). ahead(): whether the shard is still wanted only
  // ahead of need, asked when its transfer joins the queue. Throws Dropped when the transfer was dropped.
  async fetch(e, { ahead = () => false, place, onQuota }) {
    const t0 = performance.now();
    const out = await this.tries(e, ahead, place, onQuota);
    const net = this.network;
    Object.assign(net, { fetches: net.fetches + 1, bytes: net.bytes + e.size,
                         wait_s: net.wait_s + (performance.now() - t0) / 1000, failed_sources: this.failing.size });
    return out;
  }

  async tries(e, ahead, place, onQuota) {
    let lastError;
    for (let attempt = 0; attempt <= this.retries; attempt++) {
      const base = this.source();
      const url = new URL(e.file, base).href;
      let link;
      try {
        link = await this.transfers.enter(e.file, ahead());
      } catch (err) {                                              // Dropped: nobody wants it any more
        this.onStatus(e.file, "on demand");
        throw err;
      }
      this.onStatus(e.file, attempt ? "retrying" : "downloading", false);   // said with the first bytes
      const dir = place();
      let data = null;
      let failure = null;
      try {
        data = dir ? await this.intoOpfs(e, dir, url, link.signal, !this.wholeOnly.has(base))
                   : await this.intoMemory(e, url, link.signal);
      } catch (err) {
        failure = err;
      } finally {
        link.done();
      }
      if (failure && link.signal.aborted) {                        // dropped under way: what arrived is kept
        this.network.dropped++;
        this.onStatus(e.file, "on demand");
        throw link.signal.reason;
      }
      if (!failure) {
        this.onStatus(e.file, dir ? "done" : "in memory");
        return { data, kept: !!dir };
      }
      lastError = failure;
      if (failure?.resumed && failure.name === "TypeError" && !this.wholeOnly.has(base)) {
        // a network error on a Range request: a host on another origin may refuse the header (CORS); this
        // source sends whole files from now on (what arrived is kept until the new copy replaces it)
        this.wholeOnly.add(base);
        attempt--;
        continue;
      }
      if (failure?.name === "QuotaExceededError") {
        try {
          onQuota(failure);
        } catch (err) {
          this.onStatus(e.file, "error");
          throw err;
        }
        attempt--;
        continue;
      }
      this.onStatus(e.file, "retrying");
      if (this.failing.size < this.sources.length - 1) {
        this.failing.add(base);                                 // the next source, at once
        attempt--;
      } else {
        await sleep(200 * 2 ** attempt);
      }
    }
    this.onStatus(e.file, "error");
    const kept = place() ? ": what has arrived is kept and the download resumes" : "";
    throw new PackageError(`could not download ${e.file} from ${this.sources.length > 1 ? "any source" : new URL(this.sources[0]).host} ` +
                           `(${lastError?.message || lastError}). Check the network connection and load again${kept}.`);
  }

  // One try at a shard into <file>.part in `dir`, resuming what is there with a Range request (when `resume`),
  // verified, then moved into place. A host that answers a Range request with the whole file (200) is
  // written from the start; a shard that changed on the host fails its sha256 and is fetched again. A
  // QuotaExceededError leaves nothing behind; other failures keep the bytes that arrived.
  async intoOpfs(e, dir, url, signal, resume = true) {
    let writable = null;
    try {
      // creating the file can already exceed the quota (another download holds the space)
      const part = await dir.getFileHandle(`${e.file}.part`, { create: true });
      let have = (await part.getFile()).size;
      const before = have;
      if (have > e.size || !resume) have = 0;
      if (have < e.size) {
        // Range only (no If-Range: it is no CORS-safelisted header, so another origin would need to allow it)
        const ranged = have > 0;
        const resp = await fetch(url, { cache: "no-store", signal, headers: ranged ? { Range: `bytes=${have}-` } : {} })
          .catch((err) => { if (ranged && err) err.resumed = true; throw err; });
        if (resp.status === 200) have = 0;
        else if (resp.status !== 206 || !(resp.headers.get("Content-Range") || "").startsWith(`bytes ${have}-`)) {
          throw new Error(`${e.file}: HTTP ${resp.status}`);
        }
        writable = await part.createWritable({ keepExistingData: have > 0 });
        if (have > 0) await writable.seek(have); else await writable.truncate(0);
        this.onBytes(have - before);
        await this.receive(resp, async (chunk) => { await writable.write(chunk); have += chunk.byteLength; });
        await writable.close();
        writable = null;
      }
      this.onStatus(e.file, "verifying", false);
      const data = await (await part.getFile()).arrayBuffer();
      if ((await sha256Hex(data)) !== e.sha256) {
        await dir.removeEntry(`${e.file}.part`);
        this.onBytes(-have);
        throw new Error(`${e.file}: sha256 mismatch after download`);
      }
      await part.move(e.file);
      return data;
    } catch (err) {
      if (err?.name === "QuotaExceededError") {
        if (writable) await writable.abort().catch(() => {});
        await dir.removeEntry(`${e.file}.part`).catch(() => {});
      } else if (writable) {
        await writable.close().catch(() => {});                   // keep the bytes that arrived, for Range resume
      }
      throw err;
    }
  }

  // One try at a shard into memory, verified; nothing is stored.
  async intoMemory(e, url, signal) {
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
      this.onStatus(e.file, "verifying", false);
      if (have !== e.size || (await sha256Hex(data)) !== e.sha256) throw new Error(`${e.file}: sha256 mismatch after download`);
    } catch (err) {
      this.onBytes(-have);
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
      this.onBytes(value.byteLength);
    }
  }
}
