// Reads kernels (assets.js: bundled, or shaders/ beside web/; or from a base URL) and applies the same preprocessor as engine/shaders.py:
//   //!include FILE    //!if NAME    //!if !NAME    //!elif NAME    //!elif !NAME    //!else    //!endif
//   //!const NAME      -> `const NAME: u32 = <value>u;` from the plan step's consts (kernel geometry)
// then reads the kernel's interface: binding index by variable name, and the Params struct fields.
import { kernelSource } from "./assets.js";
import { ShaderError } from "./errors.js";

const BINDING = /@binding\((\d+)\)\s*var<([\w\s,]+)>\s*(\w+)/g;
const PARAMS = /struct\s+Params\s*\{([^}]*)\}/;
const FIELD = /(\w+)\s*:\s*(u32|i32|f32)/g;

// One string per kernel variant: the kernel, its defines and its constants, in a fixed order.
export function variantKey(name, defines, consts) {
  const constKey = Object.entries(consts).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `${k}=${v}`);
  return `${name}|${[...new Set(defines)].sort().join(",")}|${constKey.join(",")}`;
}

export class ShaderLibrary {
  constructor(baseUrl) {
    this.baseUrl = baseUrl;     // null: the kernels this build carries (assets.js); else e.g. new URL("/shaders/", location.href)
    this.files = new Map();     // file -> Promise<text>
    this.kernels = new Map();   // name|defines -> Promise<kernel>
  }

  file(name) {
    if (!this.files.has(name)) {
      this.files.set(name, !this.baseUrl ? kernelSource(name) : fetch(new URL(name, this.baseUrl)).then((r) => {
        if (!r.ok) throw new ShaderError(`kernel source ${name}: HTTP ${r.status}`);
        return r.text();
      }));
    }
    return this.files.get(name);
  }

  async preprocess(name, defines, consts = {}) {
    const declared = new Set();
    const out = [];
    const included = new Set();
    const keep = [];       // one entry per open //!if: [whether its current branch is kept, whether any was]
    const opened = [];     // where each open //!if is, for the error of one left open
    const holds = (cond) => defines.has(cond.replace(/^!/, "")) !== cond.startsWith("!");
    const emit = async (file) => {
      const lines = (await this.file(file)).split("\n");
      if (lines.at(-1) === "") lines.pop();        // as Python's splitlines: no line after the last newline
      for (const [i, line] of lines.entries()) {
        const at = `${file}:${i + 1}`;
        const d = line.trim();
        if (d.startsWith("//!if ")) {
          const taken = holds(d.slice(6).trim());
          keep.push([taken, taken]);
          opened.push(at);
        } else if (d.startsWith("//!elif ") || d === "//!else") {
          if (!keep.length) throw new ShaderError(`${at}: ${d.split(/\s+/)[0]} without //!if`);
          const [, any] = keep[keep.length - 1];
          const branch = !any && (d === "//!else" || holds(d.slice(8).trim()));
          keep[keep.length - 1] = [branch, any || branch];
        } else if (d === "//!endif") {
          if (!keep.length) throw new ShaderError(`${at}: //!endif without //!if`);
          keep.pop();
          opened.pop();
        } else if (!keep.every(([kept]) => kept)) {
          continue;
        } else if (d.startsWith("//!const ")) {
          const name = d.slice(9).trim();
          const value = consts[name];
          if (!(Number.isInteger(value) && value > 0 && value < 2 ** 31)) {
            throw new ShaderError(`${at}: constant ${name} needs a positive integer from the plan, got ${value}`);
          }
          declared.add(name);
          out.push(`const ${name}: u32 = ${value}u;`);
        } else if (d.startsWith("//!include ")) {
          const inc = d.slice(11).trim();
          if (!included.has(inc)) {
            included.add(inc);
            await emit(inc);
          }
        } else {
          out.push(line);
        }
      }
    };
    await emit(`${name}.wgsl`);
    if (keep.length) throw new ShaderError(`${opened.at(-1)}: unterminated //!if`);
    const extra = Object.keys(consts).filter((c) => !declared.has(c));
    if (extra.length) throw new ShaderError(`${name}.wgsl declares no constant [${extra.sort().map((c) => `'${c}'`).join(", ")}]`);
    return out.join("\n") + "\n";
  }

  kernel(name, defines = [], consts = {}) {
    const key = variantKey(name, defines, consts);
    if (!this.kernels.has(key)) {
      this.kernels.set(key, (async () => {
        if (!/^[a-z0-9_]+$/.test(name)) throw new ShaderError(`unknown kernel ${name}`);
        // WGSL asks for `enable subgroups;` before subgroup built-ins; the native engine's WGSL front end
        // (naga in wgpu-py 0.32) refuses the directive, so the sources leave it out and the browser adds it.
        const directive = [...defines].includes("SUBGROUPS") ? "enable subgroups;\n" : "";
        const source = directive + (await this.preprocess(name, new Set(defines), consts));
        const bindings = new Map();
        for (const m of source.matchAll(BINDING)) bindings.set(m[3], { index: Number(m[1]), space: m[2] });
        const struct = source.match(PARAMS);
        const params = struct ? [...struct[1].matchAll(FIELD)].map((m) => [m[1], m[2]]) : [];
        return { name, key, source, bindings, params };
      })());
    }
    return this.kernels.get(key);
  }
}
