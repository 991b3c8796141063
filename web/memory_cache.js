// Verified shard bytes held in memory, least recently used first out, within a byte budget (the tier
// between the GPU's expert slots and OPFS when paging). `touch` is the one most-recently-used idiom.
export class MemoryCache {
  constructor(budget) {
    this.budget = budget;
    this.files = new Map();              // file -> ArrayBuffer, least recently used first
    this.used = 0;
    this.counts = { hits: 0, misses: 0, evictions: 0 };
  }

  has(file) { return this.files.has(file); }

  // The bytes of `file`, now the most recently used, or undefined (a hit or nothing: misses are counted by put).
  touch(file) {
    const data = this.files.get(file);
    if (data === undefined) return undefined;
    this.files.delete(file);
    this.files.set(file, data);
    this.counts.hits++;
    return data;
  }

  // Keeps `data` as the most recently used, evicting the least recently used beyond the budget.
  put(file, data) {
    if (this.files.has(file)) return;
    this.counts.misses++;
    this.files.set(file, data);
    this.used += data.byteLength;
    for (const [old, buf] of this.files) {
      if (this.used <= this.budget || old === file) break;
      this.files.delete(old);
      this.used -= buf.byteLength;
      this.counts.evictions++;
    }
  }

  stats() {
    return { ...this.counts, bytes: this.used, budget: this.budget, files: this.files.size };
  }
}
