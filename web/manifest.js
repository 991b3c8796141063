// Reads manifest.json as engine/manifest.py does: the version, the manifest's own sha256 (which covers every
// byte of the package through the shards' sha256), then the structure: schemas/manifest.schema.json (with
// @cfworker/json-schema, as the native engine does with jsonschema), then the cross-references.
import { Validator } from "../vendor/json-schema/index.js";
import { PackageError } from "./errors.js";

export const FORMAT_VERSION = 4;   // the one format this webmoe reads (converter/writer.py writes it)
const ZERO = "0".repeat(64);
const SEAL = /"manifest_sha256": "([0-9a-f]{64})"/g;

async function sha256Hex(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// [the sha256 the bytes state, the sha256 they have] of a sealed manifest (engine/manifest.py).
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
  checkVersion(m);
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

const validators = new Map();

// Throws a PackageError naming where `value` first breaks schemas/NAME.schema.json.
export async function checkSchema(value, name, what) {
  if (!validators.has(name)) {
    const r = await fetch(new URL(`../schemas/${name}.schema.json`, import.meta.url));
    if (!r.ok) throw new PackageError(`schema ${name}: HTTP ${r.status}`);
    validators.set(name, new Validator(await r.json(), "2020-12", true));
  }
  const result = validators.get(name).validate(value);
  if (!result.valid) {
    const e = result.errors[result.errors.length - 1];
    const where = e.instanceLocation.replace(/^#\/?/, "") || "the top level";
    throw new PackageError(`malformed ${what} at ${where}: ${e.error.slice(0, 300)}`);
  }
}

export function checkVersion(m) {
  if (m.format !== "rdrr") throw new PackageError(`manifest.json is not an RDRR package (format '${String(m.format).slice(0, 64)}')`);
  if (!isInt(m.format_version)) throw new PackageError("malformed manifest.json: format_version is not an integer");
  if (m.format_version > FORMAT_VERSION) {
    throw new PackageError(`package format ${m.format_version} is newer than this webmoe (reads ${FORMAT_VERSION}); upgrade webmoe`);
  }
  if (m.format_version < FORMAT_VERSION) {
    throw new PackageError(`package format ${m.format_version} is older than this webmoe reads (${FORMAT_VERSION}); ` +
                           "convert the checkpoint again with `webmoe convert`");
  }
}

const REQUIRED = { format: "string", format_version: "int", family: "string", config: "dict", moe: "dict",
                   tokenizer: "dict", plan: "dict", tensors: "dict", experts: "dict", shards: "list" };
const PLAN = { buffers: "dict", steps: "list", moe_layers: "list", sampler: "list", io: "dict", resources: "dict" };
const PY_NAME = { string: "str", int: "int", dict: "dict", list: "list" };

const isInt = (v) => Number.isInteger(v);
const isDict = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const KIND = { string: (v) => typeof v === "string", int: isInt, dict: isDict, list: Array.isArray };

export function validateManifest(m) {
  if (!isDict(m)) throw new PackageError("malformed manifest.json: expected a JSON object");
  for (const [key, kind] of Object.entries(REQUIRED)) {
    if (!KIND[kind](m[key])) throw new PackageError(`malformed manifest.json: '${key}' missing or not a ${PY_NAME[kind]}`);
  }
  const files = new Map();
  for (const s of m.shards) {
    if (!(isDict(s) && typeof s.file === "string" && isInt(s.size) && typeof s.sha256 === "string")) {
      throw new PackageError(`malformed shard entry ${JSON.stringify(s)}`);
    }
    if (s.file.includes("/") || s.file.includes("\\") || s.file.startsWith(".")) {
      throw new PackageError(`shard name '${s.file}' is not a plain file name`);
    }
    files.set(s.file, s.size);
  }
  for (const [name, t] of Object.entries(m.tensors)) {
    if (!(isDict(t) && files.has(t.shard) && isInt(t.offset) && isInt(t.size) && ["f32", "f16"].includes(t.dtype)
          && t.offset >= 0 && t.offset + t.size <= files.get(t.shard))) {
      throw new PackageError(`malformed tensor entry '${name}'`);
    }
  }
  for (const [key, e] of Object.entries(m.experts)) {
    if (!(isDict(e) && files.has(e.shard) && isInt(e.size) && e.size <= files.get(e.shard))) {
      throw new PackageError(`malformed expert entry '${key}'`);
    }
  }
  validatePlan(m.plan);
  return m;
}

// The plan's structure records point at real steps and buffers.
export function validatePlan(plan) {
  for (const [key, kind] of Object.entries(PLAN)) {
    if (!KIND[kind](plan[key])) throw new PackageError(`malformed plan: '${key}' missing or not a ${PY_NAME[kind]}`);
  }
  const { steps, buffers } = plan;
  if (![...steps, ...plan.sampler].every((s) => isDict(s) && typeof s.kernel === "string" && isDict(s.bind))) {
    throw new PackageError("malformed plan: a step lacks its kernel or bindings");
  }
  for (const role of ["ids", "logits", "token"]) {
    if (!(plan.io[role] in buffers)) throw new PackageError(`malformed plan: io.${role} names no plan buffer`);
  }
  for (const rec of plan.moe_layers) {
    const ok = isDict(rec) && ["layer", "router_logits_step", "router_step"].every((k) => isInt(rec[k]))
      && Array.isArray(rec.experts) && rec.experts.length === 2 && rec.experts.every(isInt)
      && rec.topk_ids in buffers && rec.router_input in buffers;
    if (!ok || !(rec.router_logits_step >= 0 && rec.router_logits_step < rec.router_step && rec.router_step < rec.experts[0]
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
