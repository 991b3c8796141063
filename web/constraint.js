// Constrained decoding in the browser, the twin of engine/constraint.py: a grammar (JSON mode or a JSON
// schema) decides which tokens may come next, and its mask goes to the GPU sampler (shaders/sample_mask.wgsl),
// so every sampled token continues a text the grammar accepts. The masks come from XGrammar's WebAssembly
// build (@mlc-ai/web-xgrammar, the library WebLLM uses; llguidance, the native engine's, has no browser
// build), bundled as dist/xgrammar.js and loaded the first time a grammar is asked for, so a page that never
// asks for JSON never downloads it.
//
//   const grammar = jsonGrammar({ type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] });
//   engine.generate("Answer in JSON.", { grammar })          // text that parses and matches the schema
import { grammarLibraryUrl } from "./assets.js";
import { PromptError } from "./errors.js";
import { schemaError } from "./manifest.js";

// Compact JSON as the native engine writes it (no whitespace between tokens, "," and ":" alone), and JSON
// Schema's own rules for what a schema leaves open (additional properties allowed unless it says otherwise,
// as llguidance reads schemas; XGrammar's strict mode would forbid them).
const ANY_WHITESPACE = false;
const ONE_LINE = -1;
const SEPARATORS = [",", ":"];
const STRICT = false;

let library = null;
// XGrammar, loaded once per worker. Its C++ reports a failure (a schema it cannot use) by printing a line and
// aborting the call; the build collects the printed lines in `printed` (build.mjs), read by failure().
function xgrammar() {
  library ||= import(/* @vite-ignore */ grammarLibraryUrl().href).then((m) => m.default, (e) => {
    library = null;
    throw new PromptError(`constrained decoding needs XGrammar, which could not be loaded: ${e.message || e}`);
  });
  return library;
}

// The message of XGrammar's last failure: its last "[FATAL] path:line: message" line, without the path.
async function failure(what, err) {
  const printed = (await xgrammar()).printed;
  const fatal = printed.filter((line) => line.includes("[FATAL]")).pop();
  printed.length = 0;
  const message = fatal ? fatal.replace(/^.*\[FATAL\]\s*\S+:\d+:\s*/, "") : String(err?.message || err);
  return new PromptError(`${what}: ${brief(message)}`);
}

// A message's first line, at most 300 characters (as engine/constraint.py's _brief).
function brief(message) {
  const line = message.trim().split("\n", 1)[0];
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}

// The grammar of JSON text matching `schema` (a JSON Schema); null: any JSON object (JSON mode). What
// GenerationConfig's `grammar` takes; a schema XGrammar cannot use is a PromptError when decoding starts.
export function jsonGrammar(schema = null) {
  if (schema === null || schema === undefined) schema = { type: "object" };
  if (typeof schema !== "object" && typeof schema !== "boolean") throw new PromptError("a JSON schema is an object");
  let text;
  try {
    text = JSON.stringify(schema);
  } catch (e) {
    throw new PromptError(`the JSON schema cannot be used: ${e.message}`);
  }
  return { kind: "json_schema", schema: text };
}

// OpenAI's response_format -> the grammar decoding holds the answer to, as the native server reads it
// (serve/api_requests.py, against the same schema): any JSON object for json_object, JSON matching the
// schema for json_schema (always enforced, `strict` or not); null for text or none.
export async function responseFormatGrammar(format) {
  if (format == null) return null;
  const error = await schemaError(format, "chat_request", "response_format");
  if (error) throw new PromptError(`response_format: ${error.replace(/^the top level: /, "")}`);
  if (format.type === "text") return null;
  return jsonGrammar(format.type === "json_schema" ? format.json_schema.schema ?? {} : null);
}

// A PromptError unless `grammar` is what jsonGrammar() returns.
export function checkGrammar(grammar) {
  if (!(grammar && grammar.kind === "json_schema" && typeof grammar.schema === "string")) {
    throw new PromptError("a grammar is what jsonGrammar(schema) returns (see web/constraint.js)");
  }
}

// XGrammar's view of one package's vocabulary: every token's text by id as tokenizer.json spells it (special
// tokens empty, so never allowed), how the tokenizer spells bytes, the model's vocabulary size (ids the
// tokenizer lacks are never allowed) and the end-of-sequence tokens a finished text may take.
export class GrammarTokens {
  static async create(tokenizerJson, vocabSize, eosTokenIds) {
    const xgr = await xgrammar();
    const t = new GrammarTokens();
    const { vocab, kind, prependSpace } = encodedVocab(tokenizerJson, vocabSize);
    try {
      t.info = await xgr.TokenizerInfo.createTokenizerInfo(vocab, kind, prependSpace, vocabSize, [...eosTokenIds]);
      t.compiler = await xgr.GrammarCompiler.createGrammarCompiler(t.info, false);
    } catch (e) {
      throw await failure("constrained decoding cannot read this model's tokenizer", e);
    }
    t.vocabSize = vocabSize;
    return t;
  }

  async compile(grammar) {
    checkGrammar(grammar);
    try {
      return await this.compiler.compileJSONSchema(grammar.schema, ANY_WHITESPACE, ONE_LINE, SEPARATORS, STRICT);
    } catch (e) {
      throw await failure("the JSON schema cannot be used", e);
    }
  }
}

// One sequence's grammar state: mask() is the row for sample_mask ([ceil(V / 32)] u32, bit set = allowed),
// push(token) advances it, `done` once the grammar admits nothing more (the text is complete).
export class Constraint {
  static async create(tokens, grammar) {
    const xgr = await xgrammar();
    const c = new Constraint();
    const compiled = await tokens.compile(grammar);
    // terminate without a stop token: complete text ends the sequence at once, as llguidance's is_stopped
    c.matcher = await xgr.GrammarMatcher.createGrammarMatcher(compiled, undefined, true);
    compiled.dispose();
    return c;
  }

  async mask() {
    let bits;
    try {
      bits = await this.matcher.getNextTokenBitmask();
    } catch (e) {
      throw await failure("the grammar failed", e);
    }
    const row = new Uint32Array(bits.buffer, bits.byteOffset, bits.length);
    if (!row.some((w) => w !== 0)) throw new PromptError("the grammar allows no next token: no token fits");
    return row;
  }

  push(token) {
    if (!this.matcher.acceptToken(token)) throw new PromptError(`token ${token} breaks the grammar`);
  }

  get done() {
    return this.matcher.isTerminated();
  }

  dispose() {
    this.matcher?.dispose();
    this.matcher = null;
  }
}

// tokenizer.json -> XGrammar's encoded vocabulary: tokens by id (gaps and special tokens empty), and how to
// read them: "byte_level" (GPT-2's byte-to-character alphabet), "byte_fallback" (SentencePiece: "▁" for a
// space, <0xAB> for a byte) or "raw", with whether the tokenizer puts a space before the text. The same
// reading XGrammar's Python TokenizerInfo.from_huggingface gives a tokenizer.json.
export function encodedVocab(tokenizerJson, vocabSize) {
  const decoders = flatten(tokenizerJson.decoder);
  const kind = decoders.some((d) => d.type === "ByteLevel") ? "byte_level"
    : decoders.some((d) => d.type === "ByteFallback") ? "byte_fallback" : "raw";
  const prependSpace = [...flatten(tokenizerJson.normalizer), ...flatten(tokenizerJson.pre_tokenizer)]
    .some((n) => (n.type === "Prepend" && n.prepend === "▁") ||
                 (n.type === "Metaspace" && (n.prepend_scheme ?? (n.add_prefix_space ? "always" : "never")) !== "never"));
  const vocab = new Array(vocabSize).fill("");       // ids past the model's vocabulary are dropped
  const model = tokenizerJson.model || {};
  const entries = Array.isArray(model.vocab) ? model.vocab.map(([piece], id) => [piece, id]) : Object.entries(model.vocab || {});
  for (const [piece, id] of entries) if (id < vocabSize) vocab[id] = piece;
  // added tokens are written as text, not in the byte alphabet: a special one is never text (empty), a
  // plain one is spelled as the model's own tokens would spell it
  for (const a of tokenizerJson.added_tokens || []) {
    if (a.id < vocabSize) vocab[a.id] = a.special ? "" : kind === "byte_level" ? byteLevel(a.content) : a.content;
  }
  return { vocab, kind, prependSpace };
}

function flatten(part) {
  if (!part) return [];
  const inner = part.decoders || part.normalizers || part.pretokenizers;
  return inner ? inner.flatMap(flatten) : [part];
}

// GPT-2's byte-to-character alphabet: printable bytes stand for themselves, the rest for 256 + n.
let BYTE_CHARS = null;
function byteLevel(text) {
  if (!BYTE_CHARS) {
    BYTE_CHARS = [];
    let n = 0;
    for (let b = 0; b < 256; b++) {
      const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      BYTE_CHARS.push(String.fromCodePoint(printable ? b : 256 + n++));
    }
  }
  return Array.from(new TextEncoder().encode(text), (b) => BYTE_CHARS[b]).join("");
}
