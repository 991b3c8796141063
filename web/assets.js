// The kernels (shaders/*.wgsl) and JSON Schemas (schemas/*.schema.json) the runtime reads. Unbuilt, the
// modules fetch them from beside web/ (as `webmoe serve` lays a source checkout out); the npm build
// (build.mjs) replaces this module with one holding every file inline, so a bundled app carries them and
// nothing is fetched from where the module happens to be served.
import { PackageError, ShaderError } from "./errors.js";

// WGSL source of shaders/NAME (e.g. "matmul.wgsl").
export async function kernelSource(name) {
  const r = await fetch(new URL(`../shaders/${name}`, import.meta.url));
  if (!r.ok) throw new ShaderError(`kernel source ${name}: HTTP ${r.status}`);
  return r.text();
}

// schemas/NAME.schema.json, parsed.
export async function schemaJson(name) {
  const r = await fetch(new URL(`../schemas/${name}.schema.json`, import.meta.url));
  if (!r.ok) throw new PackageError(`schema ${name}: HTTP ${r.status}`);
  return r.json();
}

// Where constraint.js finds XGrammar: dist/xgrammar.js (build.mjs builds it from @mlc-ai/web-xgrammar).
export function grammarLibraryUrl() {
  return new URL("./dist/xgrammar.js", import.meta.url);
}
