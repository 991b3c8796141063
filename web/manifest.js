// Validates manifest.json as engine/package.py does (validate, validate_plan): the same checks, the same
// messages, so a package the native engine refuses is refused here too.
import { PackageError } from "./errors.js";

export const FORMAT_VERSION = 3;   // the one format this webmoe reads (converter/writer.py writes it)

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
  if (m.format !== "rdrr") throw new PackageError(`manifest.json is not an RDRR package (format '${m.format}')`);
  if (m.format_version > FORMAT_VERSION) {
    throw new PackageError(`package format ${m.format_version} is newer than this webmoe (reads ${FORMAT_VERSION}); upgrade webmoe`);
  }
  if (m.format_version < FORMAT_VERSION) {
    throw new PackageError(`package format ${m.format_version} is older than this webmoe reads (${FORMAT_VERSION}); ` +
                           "convert the checkpoint again with `webmoe convert`");
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
