// Reads manifest.json as format/manifest.py does: the version, the manifest's own sha256 (which covers every
// byte of the package through the shards' sha256), then the structure: schemas/manifest.schema.json (with
// @cfworker/json-schema, as the native engine does with jsonschema), then the cross-references. The format
// version is the schema's (served with the page), stated nowhere else.
import { Validator } from "@cfworker/json-schema";
import { schemaJson } from "./assets.js";
import { planFor } from "./plan_variants.js";
import { PackageError } from "./errors.js";
import { variables } from "./expr.js";

const ZERO = "0".repeat(64);
const SEAL = /"manifest_sha256": "([0-9a-f]{64})"/g;

export async function sha256Hex(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// [the sha256 the bytes state, the sha256 they have] of a sealed manifest (format/manifest.py).
export async function manifestDigest(text) {
  const stated = [...text.matchAll(SEAL)].map((m) => m[1]);
  if (stated.length !== 1) {
    throw new PackageError("manifest.json does not state its sha256 once (manifest_sha256); it was not written " +
                           "by `webmoe convert`, or was changed: convert the checkpoint again");
  }
  const body = text.replace(SEAL, `"manifest_sha256": "${ZERO}"`);
  return [stated[0], await sha256Hex(new TextEncoder().encode(body))];
}

// The validated manifest of `raw` (the bytes of manifest.json); `digest` pins the sha256 it must have.
export async function readManifest(raw, digest = null) {
  let text, m;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(raw);
    m = JSON.parse(text);
  } catch (e) {
    throw new PackageError(`manifest.json is not valid JSON: ${e.message}`);
  }
  if (!isDict(m)) throw new PackageError("malformed manifest.json: expected a JSON object");
  checkVersion(m, await formatOf());
  const [stated, actual] = await manifestDigest(text);
  if (stated !== actual) {
    throw new PackageError(`manifest.json was changed after conversion: its bytes have sha256 ${actual}, it states ` +
                           `${stated}; convert or download the package again`);
  }
  if (digest && digest.toLowerCase() !== actual) {
    throw new PackageError(`the package's manifest has sha256 ${actual}, not the ${digest} asked for`);
  }
  await checkSchema(m, "manifest", "manifest.json");
  return validateManifest(m);
}

const schemas = new Map();      // name -> schemas/NAME.schema.json, read once
const validators = new Map();

export async function schema(name) {
  if (!schemas.has(name)) schemas.set(name, schemaJson(name));
  return schemas.get(name);
}

// The one format this webmoe reads: the manifest schema's format and format_version.
export async function formatOf() {
  const { format, format_version: version } = (await schema("manifest")).properties;
  return { name: format.const, version: version.const };
}

// Where `value` first breaks schemas/NAME.schema.json (or the schema of its top-level `property`), as
// "PLACE: WHAT", or null when it does not.
export async function schemaError(value, name, property = null) {
  const key = property ? `${name}#${property}` : name;
  if (!validators.has(key)) {
    const whole = await schema(name);
    validators.set(key, new Validator(property ? whole.properties[property] : whole, "2020-12", true));
  }
  const result = validators.get(key).validate(value);
  if (result.valid) return null;
  const e = result.errors[result.errors.length - 1];
  return `${e.instanceLocation.replace(/^#\/?/, "") || "the top level"}: ${e.error.slice(0, 300)}`;
}

// Throws a PackageError naming where `value` first breaks schemas/NAME.schema.json.
export async function checkSchema(value, name, what) {
  const error = await schemaError(value, name);
  if (error) throw new PackageError(`malformed ${what} at ${error}`);
}

export function checkVersion(m, { name, version }) {
  if (m.format !== name) throw new PackageError(`manifest.json is not an RDRR package (format '${String(m.format).slice(0, 64)}')`);
  if (!isInt(m.format_version)) throw new PackageError("malformed manifest.json: format_version is not an integer");
  if (m.format_version > version) {
    throw new PackageError(`package format ${m.format_version} is newer than this webmoe (reads ${version}); upgrade webmoe`);
  }
  if (m.format_version < version) {
    throw new PackageError(`package format ${m.format_version} is older than this webmoe reads (${version}); ` +
                           "convert the checkpoint again with `webmoe convert`");
  }
}

const isInt = (v) => Number.isInteger(v);
const isDict = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

// The cross-references between shards, tensors, experts and the plan (after the schema), as
// format/manifest.py checks them, with the same messages.
export function validateManifest(m) {
  const files = new Map();
  for (const s of m.shards) {
    if (files.has(s.file)) throw new PackageError(`malformed manifest.json: shard ${s.file} is listed twice`);
    files.set(s.file, s);
  }
  for (const [name, t] of Object.entries(m.tensors)) {
    const shard = files.get(t.shard);
    if (!shard || shard.kind !== "dense" || t.offset + t.size > shard.size) {
      throw new PackageError(`malformed manifest.json: tensor '${name}' lies outside the dense shards`);
    }
  }
  const tok = files.get(m.tokenizer.file);
  if (!tok || tok.kind !== "tokenizer") {
    throw new PackageError("malformed manifest.json: the tokenizer file is not among the shards");
  }
  const moe = m.moe;
  if (moe.moe_layers.some((layer) => layer >= m.config.num_layers)) {
    throw new PackageError("malformed manifest.json: an MoE layer beyond num_layers");
  }
  const expected = new Set(moe.moe_layers.flatMap((layer) => Array.from({ length: moe.num_experts }, (_, e) => `${layer}_${e}`)));
  const keys = Object.keys(m.experts);
  if (keys.length !== expected.size || !keys.every((k) => expected.has(k))) {
    throw new PackageError(`malformed manifest.json: the experts listed are not those of layers [${moe.moe_layers.join(", ")}] ` +
                           `x ${moe.num_experts} experts`);
  }
  for (const [key, e] of Object.entries(m.experts)) {
    const shard = files.get(e.shard);
    if (!shard || shard.expert !== key || e.size !== moe.expert_layout.expert_bytes || e.size > shard.size) {
      throw new PackageError(`malformed manifest.json: expert ${key} does not point at its own shard`);
    }
  }
  const usage = m.routing_stats?.usage || {};
  if (Object.keys(usage).length && (Object.keys(usage).length !== moe.moe_layers.length
      || !moe.moe_layers.every((layer) => usage[String(layer)]?.length === moe.num_experts))) {
    throw new PackageError("malformed manifest.json: routing_stats.usage needs a count per expert for each MoE layer");
  }
  validatePlan(m.plan);
  checkConfigAgainstPlan(m);
  return m;
}

// What the config and moe sections state must be what the plan computes: layers (one attention step
// each), width, vocabulary, heads, MoE layers, experts and top-k (runtimes size tables from the config).
export function checkConfigAgainstPlan(m) {
  const { plan, config, moe } = m;
  const params = (kernel) => plan.steps.filter((s) => s.kernel === kernel).map((s) => s.params);
  const attention = params("attention");
  const stated = [
    ["config.num_layers", config.num_layers, attention.length, "attention steps"],
    ["config.vocab_size", config.vocab_size, plan.buffers[plan.io.logits].shape.at(-1), "the logits' width"],
    ["moe.moe_layers", moe.moe_layers, plan.moe_layers.map((r) => r.layer), "the MoE layers"],
    ...params("embed").map((p) => ["config.hidden_size", config.hidden_size, p.H, "the embedding's width"]),
    ...attention.map((p) => ["config.num_heads", config.num_heads, p.n_heads, "an attention step's heads"]),
    ...params("router").flatMap((p) => [["moe.num_experts", moe.num_experts, p.E, "a router step's E"],
                                         ["moe.top_k", moe.top_k, p.K, "a router step's K"]]),
  ];
  const show = (v) => Array.isArray(v) ? `[${v.join(", ")}]` : String(v);
  for (const [what, value, computed, where] of stated) {
    if (show(value) !== show(computed)) {
      throw new PackageError(`malformed manifest.json: ${what} is ${show(value)}, but the plan has ` +
                             `${show(computed)} (${where}); the manifest was edited or written wrongly`);
    }
  }
}

// The plan's structure records point at real steps and buffers.
export function validatePlan(plan) {
  const { steps, buffers } = plan;
  for (const role of ["ids", "positions", "cache_rows", "logits", "token"]) {
    if (!(plan.io[role] in buffers)) throw new PackageError(`malformed plan: io.${role} names no plan buffer`);
  }
  for (const [adapters, changed] of Object.entries(plan.variants || {})) {
    if (Object.keys(changed).some((i) => Number(i) >= steps.length)) {
      throw new PackageError(`malformed plan: variants.${adapters} changes a step the plan does not have`);
    }
  }
  const declared = new Set(plan.variables);
  const adapted = Object.keys(plan.variants || {}).flatMap((adapters) => planFor(plan, adapters).steps);
  for (const step of [...steps, ...plan.sampler, ...adapted]) {
    const used = new Set([...step.dispatch, ...Object.values(step.params)].flatMap((e) => [...variables(e)]));
    const undeclared = [...used].filter((v) => !declared.has(v)).sort();
    if (undeclared.length) {
      throw new PackageError(`malformed plan: step ${step.label || step.kernel} uses ${undeclared.join(", ")}, ` +
                             "which the plan's variables do not declare");
    }
  }
  for (const rec of plan.moe_layers) {
    const ok = rec.topk_ids in buffers && rec.router_input in buffers;
    if (!ok || !(rec.router_logits_step < rec.router_step && rec.router_step < rec.experts[0]
                 && rec.experts[0] < rec.experts[1] && rec.experts[1] <= steps.length)) {
      throw new PackageError(`malformed plan: bad MoE layer record ${JSON.stringify(rec)}`);
    }
    for (let i = rec.experts[0]; i < rec.experts[1]; i++) {
      if (!Object.values(steps[i].bind).includes("experts")) {
        throw new PackageError(`malformed plan: MoE layer ${rec.layer}'s expert steps do not read the slab`);
      }
    }
  }
}
