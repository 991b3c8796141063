// The plan interpreter, the browser twin of engine/executor.py: allocates the plan's buffers, compiles
// each step's kernel once, and records the steps for given runtime variables (the plan's `variables`: T,
// logit_row0, n_logits, the sampler's, bank_experts). A runtime buffer may be an array of banks (the expert
// slab and its bank ranges): a step that binds one gets a bind group per bank and is dispatched once per
// bank asked for.
import { PlanError } from "./errors.js";
import { evaluate, isDynamic } from "./expr.js";
import { variantKey } from "./shaders.js";

export const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

// Buffer bytes for `size`: whole 16-byte words, since kernels read activations and weights as vec4.
export function padded(size) {
  return Math.max(16, Math.ceil(size / 16) * 16);
}

// Defines the runtime adds to a plan step's, from what the adapter offers. They choose how a kernel runs,
// never what it computes: SUBGROUPS when the row groups of a matrix kernel (LANES / ROWS lanes,
// shaders/row_group.wgsl) fit in one subgroup.
export function runtimeDefines(gpu, consts) {
  if ("ROWS" in consts && "LANES" in consts) {
    const rowLanes = Math.floor(consts.LANES / consts.ROWS);
    if (rowLanes > 0 && rowLanes <= gpu.subgroupSize) return ["SUBGROUPS"];
  }
  return [];
}

export class Executor {
  // gpu: openDevice()'s result
  static async create(gpu, plan, tensors, runtimeBuffers, dims, shaders) {
    const ex = new Executor();
    ex.gpu = gpu;
    ex.device = gpu.device;
    const device = ex.device;
    ex.buffers = new Map([...tensors, ...runtimeBuffers]);
    for (const [name, spec] of Object.entries(plan.buffers)) {
      const count = spec.shape.reduce((a, d) => a * (typeof d === "string" ? dims[d] : d), 1);
      ex.buffers.set(name, device.createBuffer({ size: padded(4 * count), usage: STORAGE, label: name }));
    }
    ex.steps = await Promise.all(plan.steps.map((step, i) => ex.compile(i, step, shaders)));
    const align = device.limits.minUniformBufferOffsetAlignment;
    const block = Math.max(16, ...ex.steps.map((s) => blockSize(s.kernel)));
    ex.stride = Math.ceil(block / align) * align;
    ex.params = device.createBuffer({ size: Math.max(1, ex.steps.length) * ex.stride,
                                      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    ex.words = new ArrayBuffer(Math.max(1, ex.steps.length) * ex.stride);
    ex.views = { u32: new Uint32Array(ex.words), i32: new Int32Array(ex.words), f32: new Float32Array(ex.words) };
    ex.dynamic = [];
    for (const st of ex.steps) {
      st.kernel.params.forEach(([field, type], j) => {
        const word = (st.index * ex.stride) / 4 + j;
        const value = st.params[field];
        if (isDynamic(value)) ex.dynamic.push([word, value, type]);
        else ex.views[type][word] = value;
      });
      st.bindGroups = ex.bindGroups(st);
    }
    return ex;
  }

  async compile(index, step, shaders) {
    const label = step.label || step.kernel;
    const { kernel, pipeline } = await stepPipeline(this.gpu, step, shaders);
    const missing = kernel.params.filter(([f]) => !(f in step.params)).map(([f]) => f);
    const unbound = [...kernel.bindings.keys()].filter((b) => b !== "p" && !(b in step.bind));
    const unknown = Object.entries(step.bind).filter(([b, t]) => !kernel.bindings.has(b) || !this.buffers.has(t))
      .map(([b]) => b);
    if (missing.length || unbound.length || unknown.length) {
      throw new PlanError(`plan step ${label}: params missing [${missing}], bindings missing [${unbound}], unknown bindings [${unknown}]`);
    }
    return { index, label, kernel, pipeline, params: step.params, bind: step.bind, dispatch: step.dispatch,
    repeat: step.repeat ?? 1 };
  }

  // One bind group, or one per bank when the step binds a banked runtime buffer.
  bindGroups(st) {
    const banks = Math.max(0, ...Object.values(st.bind).map((t) => this.buffers.get(t))
      .filter(Array.isArray).map((b) => b.length));
    st.banked = banks > 0;
    const groups = [];
    for (let bank = 0; bank < Math.max(banks, 1); bank++) {
      const entries = [];
      if (st.kernel.bindings.has("p")) {
        entries.push({ binding: st.kernel.bindings.get("p").index,
                       resource: { buffer: this.params, offset: st.index * this.stride, size: blockSize(st.kernel) } });
      }
      for (const [name, target] of Object.entries(st.bind)) {
        let buffer = this.buffers.get(target);
        if (Array.isArray(buffer)) buffer = buffer[bank];
        entries.push({ binding: st.kernel.bindings.get(name).index, resource: { buffer, offset: 0, size: buffer.size } });
      }
      groups.push(this.device.createBindGroup({ layout: st.pipeline.getBindGroupLayout(0), entries }));
    }
    return groups;
  }

  writeParams(env) {
    for (const [word, expr, type] of this.dynamic) this.views[type][word] = evaluate(expr, env);
    this.device.queue.writeBuffer(this.params, 0, this.words);
  }

  // Records every step into one compute pass; the caller submits before the next encode.
  encode(encoder, env, profiler = null) {
    this.writeParams(env);
    this.encodeRange(encoder, env, 0, this.steps.length, null, null, profiler);
  }

  // Records steps start .. stop; the caller wrote the params for env. Banked steps are dispatched for each
  // bank in `banks` (default: every bank), their dispatch evaluated with that bank's variables bankEnv[bank].
  // With a profiler (profiler.js) every dispatch gets a timed pass of its own.
  encodeRange(encoder, env, start, stop, banks = null, bankEnv = null, profiler = null) {
    if (start >= stop) return;
    const pass = profiler ? null : encoder.beginComputePass();
    const dispatch = (st, bank, stepEnv) => {
      const counts = st.dispatch.map((d) => evaluate(d, stepEnv));
      if (Math.min(...counts) <= 0) return;
      const p = profiler ? profiler.begin(encoder, st.label) : pass;
      p.setPipeline(st.pipeline);
      p.setBindGroup(0, st.bindGroups[bank]);
      for (let r = 0; r < st.repeat; r++) p.dispatchWorkgroups(...counts);
      if (profiler) p.end();
    };
    for (const st of this.steps.slice(start, stop)) {
      if (!st.banked) {
        dispatch(st, 0, env);
        continue;
      }
      for (const bank of banks ?? st.bindGroups.keys()) dispatch(st, bank, bankEnv ? { ...env, ...bankEnv[bank] } : env);
    }
    pass?.end();
  }
}

function blockSize(kernel) {
  return Math.max(16, Math.ceil((kernel.params.length * 4) / 16) * 16);
}

// Compiled pipelines, one per kernel variant (kernel, defines, consts) and device: plan steps that differ only
// in their buffers and params share one (the demo's 68 steps are 16 variants). Bind groups are made from the
// pipeline's own ("auto") layout, so the steps sharing it need nothing else in common.
const pipelines = new WeakMap();   // device -> Map(variant key -> Promise<{kernel, pipeline}>)

function stepPipeline(gpu, step, shaders) {
  const consts = step.consts || {};
  const defines = [...(step.defines || []), ...runtimeDefines(gpu, consts)];
  const key = variantKey(step.kernel, defines, consts);
  if (!pipelines.has(gpu.device)) pipelines.set(gpu.device, new Map());
  const cache = pipelines.get(gpu.device);
  if (!cache.has(key)) {
    cache.set(key, (async () => {
      const kernel = await shaders.kernel(step.kernel, defines, consts);
      const module = gpu.device.createShaderModule({ code: kernel.source, label: kernel.name });
      const pipeline = await gpu.device.createComputePipelineAsync({ layout: "auto", label: kernel.name,
                                                                     compute: { module, entryPoint: "main" } });
      return { kernel, pipeline };
    })());
  }
  return cache.get(key);
}

// Compiles the pipelines of these plan steps, every variant at once (the browser compiles them in parallel,
// off the main thread), before any buffer exists: a load starts it while it downloads. onCompiled(done, total)
// after each variant.
export async function compileSteps(gpu, steps, shaders, onCompiled = () => {}) {
  const variants = new Map();
  for (const step of steps) {
    const consts = step.consts || {};
    variants.set(variantKey(step.kernel, [...(step.defines || []), ...runtimeDefines(gpu, consts)], consts), step);
  }
  let done = 0;
  onCompiled(done, variants.size);
  await Promise.all([...variants.values()].map((step) => stepPipeline(gpu, step, shaders)
    .then(() => onCompiled(++done, variants.size))));
}
