// Loads kernels from /shaders/ and applies the same preprocessor as engine/shaders.py:
//   //!include FILE    //!if NAME    //!if !NAME    //!else    //!endif
// then reads the kernel's interface: binding index by variable name, and the Params struct fields.

const BINDING = /@binding\((\d+)\)\s*var<([\w\s,]+)>\s*(\w+)/g;
const PARAMS = /struct\s+Params\s*\{([^}]*)\}/;
const FIELD = /(\w+)\s*:\s*(u32|i32|f32)/g;

export class ShaderLibrary {
  constructor(baseUrl) {
    this.baseUrl = baseUrl;     // e.g. new URL("/shaders/", location.href)
    this.files = new Map();     // file -> Promise<text>
    this.kernels = new Map();   // name|defines -> Promise<kernel>
  }

  file(name) {
    if (!this.files.has(name)) {
      this.files.set(name, fetch(new URL(name, this.baseUrl)).then((r) => {
        if (!r.ok) throw new Error(`kernel source ${name}: HTTP ${r.status}`);
        return r.text();
      }));
    }
    return this.files.get(name);
  }

  async preprocess(name, defines) {
    const out = [];
    const included = new Set();
    const keep = [];
    const emit = async (file) => {
      const lines = (await this.file(file)).split("\n");
      for (const line of lines) {
        const d = line.trim();
        if (d.startsWith("//!if ")) {
          const cond = d.slice(6).trim();
          keep.push(defines.has(cond.replace(/^!/, "")) === !cond.startsWith("!"));
        } else if (d === "//!else") {
          if (!keep.length) throw new Error(`${file}: //!else without //!if`);
          keep[keep.length - 1] = !keep[keep.length - 1];
        } else if (d === "//!endif") {
          if (!keep.length) throw new Error(`${file}: //!endif without //!if`);
          keep.pop();
        } else if (!keep.every(Boolean)) {
          continue;
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
    if (keep.length) throw new Error(`${name}.wgsl: unterminated //!if`);
    return out.join("\n") + "\n";
  }

  kernel(name, defines = []) {
    const key = `${name}|${[...defines].sort().join(",")}`;
    if (!this.kernels.has(key)) {
      this.kernels.set(key, (async () => {
        if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`unknown kernel ${name}`);
        const source = await this.preprocess(name, new Set(defines));
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
