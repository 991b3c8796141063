// What decoding a sequence needs besides the forward pass (web/batch.js's decoder runs it), the twin of
// engine/generation.py: the sampling settings, the seeded generator, stop conditions and incremental
// detokenisation with stop strings held back until they are ruled out, so a seed samples the same tokens
// natively and in the browser.
import { checkGrammar, Constraint } from "./constraint.js";
import { PromptError } from "./errors.js";
import { StreamDecoder } from "./tokenizer.js";

const MASK64 = (1n << 64n) - 1n;

// Uniform floats in [0, 1) from a 64-bit seed (SplitMix64, 53-bit mantissa), as SplitMix64 in Python.
export class SplitMix64 {
  constructor(seed = null) {
    const random = () => BigInt(Math.floor(Math.random() * 2 ** 32));
    this.state = (seed == null ? (random() << 32n) | random() : BigInt(seed)) & MASK64;
  }

  random() {
    this.state = (this.state + 0x9e3779b97f4a7c15n) & MASK64;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    z ^= z >> 31n;
    return Number(z >> 11n) * 2 ** -53;
  }
}

export class GenerationConfig {
  // grammar: what constraint.js's jsonGrammar(schema) returns; the text must match it
  constructor({ maxNewTokens = 128, temperature = 0, topP = 1, seed = null, stop = null, grammar = null } = {}) {
    if (!(Number.isInteger(maxNewTokens) && maxNewTokens >= 0)) throw new PromptError("maxNewTokens must be a non-negative integer");
    if (!(temperature >= 0 && temperature <= 100)) throw new PromptError("temperature must lie in [0, 100]");
    if (!(topP > 0 && topP <= 1)) throw new PromptError("topP must lie in (0, 1]");
    if (seed != null && !Number.isInteger(seed)) throw new PromptError("seed must be an integer");
    const stops = typeof stop === "string" ? [stop] : (stop || []);
    if (!Array.isArray(stops) || !stops.every((s) => typeof s === "string")) {
      throw new PromptError("stop must be a string or a list of strings");
    }
    if (grammar != null) checkGrammar(grammar);
    Object.assign(this, { maxNewTokens, temperature, topP, seed, stop: stops.filter(Boolean), grammar });
  }
}

// Length of the longest suffix of text that is a proper prefix of a stop string.
export function pendingStop(text, stops) {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > 0; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = Math.max(best, n);
        break;
      }
    }
  }
  return best;
}

// One sequence's new tokens as text, the twin of engine/generation.py's Decoding: end-of-sequence, stop
// strings (held back until ruled out), the token budget, the grammar. push() takes each sampled token and
// returns its {id, text}; done and finishReason tell when the sequence ends ("stop": end-of-sequence token,
// stop string or a complete grammar; "length"). Decoding.create makes one (the grammar's compiler is async).
export class Decoding {
  static async create(tokenizer, config, budget) {
    const constraint = config.grammar ? await Constraint.create(await tokenizer.grammarTokens(), config.grammar) : null;
    return new Decoding(tokenizer, config, budget, constraint);
  }

  constructor(tokenizer, config, budget, constraint = null) {
    Object.assign(this, { tokenizer, config, budget, constraint });
    this.decoder = new StreamDecoder(tokenizer);
    this.emitted = 0;
    this.count = 0;
    this.done = budget <= 0;
    this.finishReason = this.done ? "length" : null;
  }

  // The sampler's inputs for the next token (engine/generation.py's Sampling): mask is the grammar's
  // token_mask row (Uint32Array) or null.
  async sampling(u) {
    const mask = this.constraint ? await this.constraint.mask() : null;
    return { temperature: this.config.temperature, topP: this.config.topP, u, mask };
  }

  push(token) {
    const cfg = this.config;
    this.count++;
    this.constraint?.push(token);
    if (this.tokenizer.eos.has(token)) {
      Object.assign(this, { done: true, finishReason: "stop" });
      return { id: token, text: this.decoder.text.slice(this.emitted) };   // a pending stop prefix is text now
    }
    this.decoder.push(token);
    const text = this.decoder.text;
    const hits = cfg.stop.map((s) => text.indexOf(s, Math.max(0, this.emitted - s.length))).filter((j) => j >= 0);
    if (hits.length) {
      Object.assign(this, { done: true, finishReason: "stop" });
      return { id: token, text: text.slice(this.emitted, Math.min(...hits)) };
    }
    const complete = this.constraint?.done ?? false;      // the grammar admits nothing more
    const last = complete || this.count >= this.budget;
    const safe = last ? text.length : text.length - pendingStop(text, cfg.stop);
    const out = { id: token, text: text.slice(this.emitted, Math.max(this.emitted, safe)) };
    this.emitted = Math.max(this.emitted, safe);
    if (last) Object.assign(this, { done: true, finishReason: complete ? "stop" : "length" });
    return out;
  }
}

// New tokens a sequence may have: asked for, and what its KV cache leaves room for.
export function tokenBudget(config, maxSeqLen, promptTokens) {
  return Math.min(config.maxNewTokens, maxSeqLen - promptTokens + 1);
}
