// How the browser engine is loaded and run, as one object checked once (engine/options.py is the native
// twin; the table in docs/web.md says which fields only one runtime has, and why). Engine.load and
// webmoe.load take it; an unknown name is a TypeError, a bad value an OptionError naming the field.
import { OptionError } from "./errors.js";
import { ADAPTER_CLASSES } from "./plan_variants.js";

const DEFAULTS = Object.freeze({
  maxSeqLen: 2048,            // KV cache rows (at most the model's max_position_embeddings)
  chunkTokens: 64,            // tokens one forward pass runs at most (the prefill chunk)
  expertCacheBytes: null,     // GPU budget for routed experts (default: resources.js's)
  memoryCacheBytes: null,     // in-memory LRU of expert shards when paging (default 256 MiB)
  pinnedExperts: [],          // [[layer, expert]] never evicted
  observeRouting: false,      // read back routing even when every expert is resident (usage statistics)
  prefetch: null,             // when paging: load each next MoE layer's predicted experts early (default: on with expertsOnDemand)
  maxBinding: null,           // a lower storage binding limit to keep to (tests)
  adapterClass: null,         // the plan variant to run, "gpu" or "cpu" (default: the adapter's own)
  digest: null,               // the manifest's sha256 to pin
  expertsOnDemand: false,     // download the dense shards only; fetch each expert when the router first asks
  opfsBudgetBytes: null,      // with expertsOnDemand: what the model may keep in OPFS (least recently used leave)
  hotExperts: 0,              // with expertsOnDemand: a share of each layer's routed tokens whose most-used experts come with the dense shards
  backgroundDownload: false,  // with expertsOnDemand: after the load, fetch the experts still missing while they fit
  storage: "auto",            // "auto": OPFS while the browser lets the model keep what it needs, else memory only; "opfs"; "memory"
  shaderBase: null,           // a URL to read the kernels from (default: those this build carries)
  onProgress: null,           // (stage) => void: {stage: "download" | "compile" | "upload", ...} as the load advances
  onDeviceLost: null,         // (message) => void: the GPU device is gone; load the model again
});
const STORAGE = ["auto", "opfs", "memory"];

export function engineOptions(given = {}) {
  const unknown = Object.keys(given).filter((k) => !Object.hasOwn(DEFAULTS, k));
  if (unknown.length) throw new TypeError(`no engine option ${unknown.sort().join(", ")}`);
  const o = { ...DEFAULTS };
  for (const [k, v] of Object.entries(given)) if (v !== undefined && v !== null) o[k] = v;
  const whole = (k, low) => {
    if (o[k] !== null && !(Number.isInteger(o[k]) && o[k] >= low)) {
      throw new OptionError(`${k} must be an integer of at least ${low}, not ${String(o[k]).slice(0, 40)}`);
    }
  };
  whole("maxSeqLen", 1);
  whole("chunkTokens", 1);
  whole("expertCacheBytes", 0);
  whole("memoryCacheBytes", 0);
  whole("maxBinding", 1);
  whole("opfsBudgetBytes", 0);
  for (const k of ["observeRouting", "expertsOnDemand", "backgroundDownload"]) {
    if (typeof o[k] !== "boolean") throw new OptionError(`${k} must be true or false`);
  }
  if (o.prefetch !== null && typeof o.prefetch !== "boolean") throw new OptionError("prefetch must be true or false");
  if (!(typeof o.hotExperts === "number" && o.hotExperts >= 0 && o.hotExperts <= 1)) {
    throw new OptionError("hotExperts must be a share in [0, 1]");
  }
  if (o.adapterClass !== null && !ADAPTER_CLASSES.includes(o.adapterClass)) {
    throw new OptionError(`adapterClass must be one of ${ADAPTER_CLASSES.join(", ")}, not ${String(o.adapterClass).slice(0, 40)}`);
  }
  if (!STORAGE.includes(o.storage)) throw new OptionError(`storage must be one of ${STORAGE.join(", ")}`);
  if (!Array.isArray(o.pinnedExperts) ||
      !o.pinnedExperts.every((p) => Array.isArray(p) && p.length === 2 && p.every((i) => Number.isInteger(i) && i >= 0))) {
    throw new OptionError("pinnedExperts must be [layer, expert] pairs of non-negative integers");
  }
  if (o.digest !== null && typeof o.digest !== "string") throw new OptionError("digest must be a sha256 in hex");
  for (const k of ["onProgress", "onDeviceLost"]) {
    if (o[k] !== null && typeof o[k] !== "function") throw new OptionError(`${k} must be a function`);
  }
  return Object.freeze(o);
}
