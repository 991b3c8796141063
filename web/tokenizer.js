// Text <-> ids with the package's tokenizer.json (@huggingface/tokenizers) and chat templates
// (@huggingface/jinja), mirroring engine/tokenizer.py.
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { GrammarTokens } from "./constraint.js";
import { PackageError, PromptError } from "./errors.js";
import { sha256Hex } from "./manifest.js";

export class TextTokenizer {
  static async load(manifestUrl, manifest) {
    const t = new TextTokenizer();
    const info = manifest.tokenizer;
    // tokenizer files are shards: checked against their sha256 like every byte of the package
    const shards = new Map(manifest.shards.map((s) => [s.file, s]));
    const get = async (name, required) => {
      const entry = shards.get(name);
      const r = entry ? await fetch(new URL(name, manifestUrl)) : null;
      if (!r?.ok) {
        if (required) throw new PackageError(`tokenizer file ${name}: ${r ? `HTTP ${r.status}` : "not in the manifest"}`);
        return {};
      }
      const bytes = new Uint8Array(await r.arrayBuffer());
      if ((await sha256Hex(bytes)) !== entry.sha256) throw new Error(`tokenizer file ${name} is corrupt (sha256 mismatch)`);
      return JSON.parse(new TextDecoder().decode(bytes));
    };
    const [json, config] = await Promise.all([get(info.file, true), get("tokenizer_config.json", false)]);
    t.json = json;
    t.vocabSize = manifest.config.vocab_size;
    t.tok = new Tokenizer(json, config);
    t.specialTokens = info.special_tokens || {};
    t.eos = new Set(info.eos_token_ids || []);
    t.template = info.chat_template ? new Template(info.chat_template) : null;
    return t;
  }

  // The vocabulary as constrained decoding sees it (constraint.js), built the first time it is asked for.
  grammarTokens() {
    const eosFirst = [...this.eos].slice(0, 1);
    this._grammarTokens ||= GrammarTokens.create(this.json, this.vocabSize, eosFirst).catch((e) => {
      this._grammarTokens = null;
      throw e;
    });
    return this._grammarTokens;
  }

  encode(text, addSpecialTokens = true) {
    return this.tok.encode(text, { add_special_tokens: addSpecialTokens }).ids.map(Number);
  }

  decode(ids) {
    return this.tok.decode(ids, { skip_special_tokens: true });
  }

  renderChat(messages, addGenerationPrompt = true) {
    if (!this.template) throw new PromptError("this model has no chat template; pass a plain text prompt instead");
    return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, ...this.specialTokens });
  }

  // A prompt is text, an array of token ids, or an array of {role, content} messages.
  promptIds(prompt) {
    if (typeof prompt === "string") return this.encode(prompt);
    if (Array.isArray(prompt) && prompt.length && prompt.every((m) => m && typeof m === "object")) {
      return this.encode(this.renderChat(prompt), false);
    }
    if (Array.isArray(prompt) && prompt.every(Number.isInteger)) return prompt;
    throw new PromptError("a prompt is a string, a list of token ids, or a list of chat messages");
  }
}

// Text of a growing list of ids, one token at a time, holding back an unfinished UTF-8 character. The twin
// of engine/tokenizer.py's StreamDecoder; @huggingface/tokenizers has no DecodeStream, so this one decodes
// the ids so far again at each token.
export class StreamDecoder {
  constructor(tokenizer) {
    this.tokenizer = tokenizer;
    this.ids = [];
    this.text = "";
  }

  push(tokenId) {
    this.ids.push(tokenId);
    const text = this.tokenizer.decode(this.ids);
    if (text.endsWith("\ufffd")) return "";
    const piece = text.slice(this.text.length);
    this.text = text;
    return piece;
  }
}
