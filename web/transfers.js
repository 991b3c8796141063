// The network link's queue: at most `limit` shard transfers at once, those the model needs now before those
// fetched ahead of need (the next layer's predicted experts, background filling), each kind in arrival
// order. A transfer ahead of need that nobody wants any more is dropped, waiting or under way (its fetch is
// aborted through the signal enter() gave), so that a wrong prediction never holds the link while a needed
// expert waits. (Native twin: none; the native engine reads its package from disk.)

export class Dropped extends Error { name = "Dropped"; }

export class TransferQueue {
  constructor(limit) {
    this.limit = limit;
    this.waiting = [];          // {file, ahead, start, drop}, in arrival order
    this.running = new Set();   // {file, ahead, abort}: transfers under way
  }

  // Resolves, when a transfer of `file` may start, to {signal, done}: the fetch's AbortSignal (aborted when
  // the transfer is dropped under way) and done(), to call when it ends. Rejects with Dropped if it was
  // ahead of need and drop(file) came before it started.
  enter(file, ahead) {
    return new Promise((start, drop) => {
      this.waiting.push({ file, ahead, start, drop });
      this.pump();
    });
  }

  // A transfer of `file`, waiting or under way, is needed now.
  need(file) {
    for (const w of [...this.waiting, ...this.running]) if (w.file === file) w.ahead = false;
  }

  // Drops the transfers of `file` that are ahead of need: those waiting reject, those under way are aborted.
  drop(file) {
    this.waiting = this.waiting.filter((w) => {
      if (w.file !== file || !w.ahead) return true;
      w.drop(new Dropped(`${file}: fetched ahead of need, and no longer wanted`));
      return false;
    });
    for (const r of this.running) if (r.file === file && r.ahead) r.abort.abort(new Dropped(`${file}: no longer wanted`));
  }

  pump() {
    while (this.running.size < this.limit && this.waiting.length) {
      const needed = this.waiting.findIndex((w) => !w.ahead);
      const [w] = this.waiting.splice(needed < 0 ? 0 : needed, 1);
      const r = { file: w.file, ahead: w.ahead, abort: new AbortController() };
      this.running.add(r);
      w.start({ signal: r.abort.signal, done: () => { this.running.delete(r); this.pump(); } });
    }
  }
}
