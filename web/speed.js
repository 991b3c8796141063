// Prefill and decode speed of a loaded engine with every expert resident, the browser twin of
// webmoe/tools/speed.py's measure_engine (`webmoe speed --browser` runs it in the engine's worker). perToken
// (ms) says where a decoded token's time goes: encode (recording and submitting, the host), wait (last
// submission to the token in hand: the adapter and the round trip), round_trip (an empty submission's),
// generate (a token through engine.generate: tokenizer and stop checks added), kernels (GPU time by
// timestamp queries, with profile).
import { SplitMix64 } from "./generation.js";
import { Profiler } from "./profiler.js";

const GREEDY = { temperature: 0, topP: 1, u: 0 };

export async function measureSpeed(engine, { prompt = 128, tokens = 32, repeats = 3, profile = false, seed = 0 } = {}) {
  const rng = new SplitMix64(seed);
  const randomIds = (n) => Array.from({ length: n }, () => Math.floor(rng.random() * engine.vocab));
  const ids = randomIds(prompt);
  const prefill = [], decode = [], steps = [];
  await engine.prefill(0, ids.slice(0, 8), 0, GREEDY);            // compiles and warms every pipeline
  await engine.decode([[ids[0], 0, 0]], [GREEDY]);
  for (let r = 0; r < repeats; r++) {
    let t0 = performance.now();
    await engine.prefill(0, ids, 0, GREEDY);
    prefill.push(prompt / ((performance.now() - t0) / 1000));
    // decode as llama-bench's tg measures it: random token ids, one at a time from an empty cache
    const stream = randomIds(tokens);
    t0 = performance.now();
    for (const [i, token] of stream.entries()) {
      await engine.decode([[token, i, 0]], [GREEDY]);
      steps.push(engine.lastStep);
    }
    decode.push(tokens / ((performance.now() - t0) / 1000));
  }
  const generate = [];
  for (let r = 0; r < repeats; r++) {           // from a one-token prompt: positions 1 .. as the decode's
    const times = [];
    for await (const _ of engine.generate(ids.slice(0, 1), { maxNewTokens: tokens + 1, temperature: 0 })) times.push(performance.now());
    if (times.length > 1) generate.push((times.at(-1) - times[0]) / (times.length - 1));   // (none: end-of-sequence at once)
  }
  const perToken = { decode: 1e3 / median(decode), encode: 1e3 * median(steps.map((s) => s.encode_s)),
                     wait: 1e3 * median(steps.map((s) => s.wait_s)), round_trip: 1e3 * await roundTrip(engine.device),
                     generate: generate.length ? median(generate) : NaN };
  const result = { adapter: engine.adapter, plan_variant: engine.adapterClass, prompt, tokens, experts_resident: !engine.experts.paging,
                   prefill: spread(prefill), decode: spread(decode), per_token_ms: perToken,
                   subgroups: engine.executor.gpu.subgroupSize, formats: engine.manifest.dtypes };
  if (profile) {
    result.profile = await profileRun(engine, ids, tokens);
    perToken.kernels = result.profile.decode.reduce((a, row) => a + row.ms, 0);
  }
  return result;
}

// Seconds from submitting a command buffer that only copies 4 bytes to those bytes mapped (median): what each
// synchronisation with the adapter costs before any work.
export async function roundTrip(device, repeats = 20) {
  const src = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const rb = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const times = [];
  for (let i = 0; i <= repeats; i++) {                 // the first warms up
    const encoder = device.createCommandEncoder();
    encoder.copyBufferToBuffer(src, 0, rb, 0, 4);
    const t0 = performance.now();
    device.queue.submit([encoder.finish()]);
    await rb.mapAsync(GPUMapMode.READ, 0, 4);
    rb.unmap();
    times.push((performance.now() - t0) / 1000);
  }
  src.destroy();
  rb.destroy();
  return median(times.slice(1));
}

// GPU time per step role (a step's label without its layer) for the prefill of ids and for each decoded token:
// {prefill, decode: [{role, kernel, calls, ms, share}]}, as speed.py's profile_run.
async function profileRun(engine, ids, tokens) {
  const plan = engine.plan;
  const kernels = new Map([...plan.steps, ...plan.sampler].map((s) => [s.label || s.kernel, s.kernel]));
  const out = {};
  engine.profiler = new Profiler(engine.device);
  try {
    let token = await engine.prefill(0, ids, 0, GREEDY);
    await engine.profiler.collect();
    out.prefill = byRole(engine.profiler.seconds, kernels, 1);
    engine.profiler.seconds = new Map();
    for (let i = 0; i < tokens; i++) {
      [token] = await engine.decode([[token, ids.length + i, 0]], [GREEDY]);
      await engine.profiler.collect();
    }
    out.decode = byRole(engine.profiler.seconds, kernels, tokens);
  } finally {
    engine.profiler = null;
  }
  return out;
}

function byRole(seconds, kernels, per) {
  const roles = new Map();
  for (const [label, times] of seconds) {
    const role = label.replace(/^L\d+\./, "");
    if (!roles.has(role)) roles.set(role, { role, kernel: kernels.get(label) ?? "?", calls: 0, s: 0 });
    const r = roles.get(role);
    r.calls += times.length;
    r.s += times.reduce((a, t) => a + t, 0);
  }
  const total = [...roles.values()].reduce((a, r) => a + r.s, 0) || 1;
  return [...roles.values()].sort((a, b) => b.s - a.s)
    .map((r) => ({ role: r.role, kernel: r.kernel, calls: r.calls / per, ms: (1e3 * r.s) / per, share: r.s / total }));
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

function spread(values) {
  return { median: median(values), min: Math.min(...values), max: Math.max(...values), runs: values };
}
