// The network link's queue: at most `limit` shard transfers at once, those the model needs now before those
// fetched ahead of need (the next layer's predicted experts, background filling), each kind in arrival
// order. A transfer ahead of need that has not started when nobody wants it any more is dropped, so that a
// wrong prediction never holds the link while a needed expert waits. (Native twin: none; the native engine
// reads its package from disk.)

export class Dropped extends Error { name = "Dropped"; }

export class TransferQueue {
  constructor(limit) {
    this.limit = limit;
    this.active = 0;
    this.waiting = [];          // {file, ahead, start, drop}, in arrival order
  }

  // Resolves when a transfer of `file` may start (the caller calls done() when it ends); rejects with
  // Dropped if it was ahead of need and drop(file) came first.
  enter(file, ahead) {
    return new Promise((start, drop) => {
      this.waiting.push({ file, ahead, start, drop });
      this.pump();
    });
  }

  done() {
    this.active--;
    this.pump();
  }

  // A waiting transfer of `file` is needed now.
  need(file) {
    for (const w of this.waiting) if (w.file === file) w.ahead = false;
  }

  // Drops the waiting transfers of `file` that are ahead of need.
  drop(file) {
    this.waiting = this.waiting.filter((w) => {
      if (w.file !== file || !w.ahead) return true;
      w.drop(new Dropped(`${file}: fetched ahead of need, and no longer wanted`));
      return false;
    });
  }

  pump() {
    while (this.active < this.limit && this.waiting.length) {
      const needed = this.waiting.findIndex((w) => !w.ahead);
      const [w] = this.waiting.splice(needed < 0 ? 0 : needed, 1);
      this.active++;
      w.start();
    }
  }
}
