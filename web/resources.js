// What a package's plan needs of an adapter (plan.resources, written by the converter), checked once at
// load before anything is allocated. The twin of engine/resources.py.
import { ExpertCacheError, PackageError, PlanError } from "./errors.js";
import { mib } from "./units.js";

// A plan buffer's bytes: resource is {T: bytes per chunk token} | {S: per position} | {fixed: n}.
export function bufferBytes(resource, dims) {
  return Object.entries(resource).reduce((a, [k, v]) => a + (k === "fixed" ? v : v * dims[k]), 0);
}


// Bytes the plan's buffers take for a chunk of T tokens and S positions: all of them, and the KV cache (the
// buffers sized by position).
export function planBytes(plan, T, S) {
  const bufs = Object.values(plan.resources.buffers);
  return { buffers: bufs.reduce((a, b) => a + bufferBytes(b, { T, S }), 0),
           kv_cache: bufs.reduce((a, b) => a + (b.S || 0) * S, 0), kv_per_token: bufs.reduce((a, b) => a + (b.S || 0), 0) };
}

export function checkResources(plan, maxBinding, T, S) {
  const r = plan.resources;
  const big = r.largest_tensor;
  const hint = `; the package was cut for ${r.max_binding / 2 ** 20} MiB bindings: convert it with --max-binding ${maxBinding}`;
  if (big.bytes > maxBinding) {
    throw new PackageError(`tensor ${big.name} (${mib(big.bytes)}) exceeds this adapter's storage binding limit of ${mib(maxBinding)}${hint}`);
  }
  const slot = r.experts.slot_bytes;
  if (slot > maxBinding) {
    throw new ExpertCacheError(`one expert slot (${mib(slot)}) exceeds this adapter's storage binding limit of ${mib(maxBinding)}${hint}`);
  }
  for (const [name, res] of Object.entries(r.buffers)) {
    const size = bufferBytes(res, { T, S });
    if (size > maxBinding) {
      throw new PlanError(`buffer ${name} needs ${size} bytes, above this adapter's storage binding limit of ${maxBinding}; lower maxSeqLen or the chunk size`);
    }
  }
}
