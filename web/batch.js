// The decoder, the twin of engine/batch.py: a Generator (engine.generate) is a batch of one. Every sequence
// holds a KV cache slot; add() prefills a new one into a free slot and samples its first token, step()
// decodes the next token of every active sequence in one pass. The browser engine has one slot (it serves
// one user; batching many is the server's), so its batches hold one sequence, through the same path.
import { PromptError } from "./errors.js";
import { Decoding, SplitMix64, tokenBudget } from "./generation.js";

export class Sequence {
  constructor(slot, config, promptTokens, decoding, rng) {
    Object.assign(this, { slot, config, promptTokens, decoding, rng });
    this.pos = 0;          // tokens in its KV cache rows
    this.last = 0;         // its newest token, not yet run through the model
    this.tokens = [];
  }

  get done() { return this.decoding.done; }
  get finishReason() { return this.decoding.finishReason; }
  get completionTokens() { return this.decoding.count; }
}

export class BatchDecoder {
  constructor(engine) {
    this.engine = engine;
    this.active = [];
    this.free = Array.from({ length: engine.maxBatch }, (_, i) => engine.maxBatch - 1 - i);
  }

  get full() { return !this.free.length; }

  // Prefills a sequence (token ids) into a free slot and samples its first token (seq.tokens[0]).
  async add(ids, config) {
    const engine = this.engine;
    if (!this.free.length) throw new PromptError(`all ${engine.maxBatch} sequences of the batch are in use`);
    const decoding = await Decoding.create(engine.tokenizer, config, tokenBudget(config, engine.maxSeqLen, ids.length));
    const seq = new Sequence(this.free.pop(), config, ids.length, decoding, new SplitMix64(config.seed));
    this.active.push(seq);
    if (seq.done) {                                // nothing to generate
      this.retire(seq);
      return seq;
    }
    try {
      const token = await engine.prefill(seq.slot, ids, 0, await seq.decoding.sampling(seq.rng.random()));
      seq.pos = ids.length;
      seq.last = token;
      seq.tokens.push(seq.decoding.push(token));
    } catch (e) {
      this.retire(seq);
      throw e;
    }
    if (seq.done) this.retire(seq);
    return seq;
  }

  // The next token of every active sequence, from one forward pass: [[seq, token], ...].
  async step() {
    const seqs = [...this.active];
    let tokens;
    try {
      const sampling = await Promise.all(seqs.map((s) => s.decoding.sampling(s.rng.random())));
      tokens = await this.engine.decode(seqs.map((s) => [s.last, s.pos, s.slot]), sampling);
    } catch (e) {
      for (const s of seqs) this.retire(s);
      throw e;
    }
    return seqs.map((s, i) => {
      s.pos += 1;
      s.last = tokens[i];
      let token;
      try {
        token = s.decoding.push(tokens[i]);
      } catch (e) {
        this.retire(s);
        throw e;
      }
      s.tokens.push(token);
      if (s.done) this.retire(s);
      return [s, token];
    });
  }

  // Ends a sequence early; its slot is free for the next.
  cancel(seq) {
    if (!this.active.includes(seq)) return;
    seq.decoding.done = true;
    seq.decoding.finishReason ||= "cancelled";
    this.retire(seq);
  }

  retire(seq) {
    if (!this.active.includes(seq)) return;
    this.active.splice(this.active.indexOf(seq), 1);
    this.free.push(seq.slot);
    seq.decoding.constraint?.dispose();     // the grammar's state lives in XGrammar's WebAssembly memory
  }
}

// engine.generate's result, a batch of one: iterate it (for await) for {id, text}; afterwards finishReason
// is "stop" (end-of-sequence token or stop string) or "length", and promptTokens / completionTokens count
// the tokens. signal (an AbortSignal) ends it.
export class Generator {
  constructor(engine, config, promptIds, signal = null) {
    Object.assign(this, { engine, config, promptIds, signal });
    this.promptTokens = promptIds.length;
    this.completionTokens = 0;
    this.finishReason = null;
  }

  async *[Symbol.asyncIterator]() {
    if (this.signal?.aborted) return;
    const batch = new BatchDecoder(this.engine);
    const seq = await batch.add(this.promptIds, this.config);
    this.finishReason = seq.finishReason;
    try {
      for (const token of [...seq.tokens]) yield this.counted(seq, token);
      while (batch.active.length && !this.signal?.aborted) {
        const [[, token]] = await batch.step();
        yield this.counted(seq, token);
      }
    } finally {
      batch.retire(seq);        // stopped early or failed: its slot and grammar state are freed too
    }
  }

  counted(seq, token) {
    this.completionTokens++;
    this.finishReason = seq.finishReason || "length";
    return token;
  }
}
