// One engine's run in the page, as benchmarks/bench_browser_peers.py asks for it: load a model (timed), then
// one greedy generation from the same random token ids: the time to the first new token (prefill of the
// prompt) and the tokens after it (decode). Bundled with esbuild into the served site as harness.js; webmoe
// itself is imported from the build `webmoe serve` sends (/web/dist/standalone/webmoe.js).
//
//   await window.runEngine({engine: "webmoe" | "transformers.js" | "wllama", format, device, ids, text, decode})
//     -> {loadSeconds, promptTokens, prefillSeconds, decodeTokens, decodeSeconds, backend}
// decode 0: load only (the cold load, which the benchmark times and leaves the engine's cache filled).
// ids: the prompt's token ids; text: the same prompt as text, for wllama, whose API takes no token ids (it
// reports how many tokens its tokenizer made of it).
import { AutoModelForCausalLM, Tensor, env } from "@huggingface/transformers";
import { Wllama } from "@wllama/wllama";

const now = () => performance.now();

// times: when each new token arrived; the first ends prefill, the rest are decode
function split(start, times) {
  if (times.length < 2) throw new Error(`only ${times.length} tokens came back`);
  return { prefillSeconds: (times[0] - start) / 1000, decodeTokens: times.length - 1,
           decodeSeconds: (times[times.length - 1] - times[0]) / 1000 };
}

async function webmoe({ format, ids, decode }) {
  const api = await import("/web/dist/standalone/webmoe.js");
  const t0 = now();
  const engine = await api.load(`/models/webmoe/${format}/`);
  const loadSeconds = (now() - t0) / 1000;
  const backend = `WebGPU (${engine.adapter})`;
  if (!decode) {
    await engine.unload();
    return { loadSeconds, backend };
  }
  const times = [];
  const start = now();
  for await (const _ of engine.generate(ids, { maxNewTokens: decode + 1, temperature: 0 })) times.push(now());
  await engine.unload();
  return { loadSeconds, backend, promptTokens: ids.length, ...split(start, times) };
}

// transformers.js: its models are read as from the Hub, from this server (so it caches them in the Cache
// API as it does the Hub's); ONNX Runtime Web's wasm from this server, with threads (the page is isolated)
const TRANSFORMERS_DTYPE = { f32: "fp32", f16: "fp16", q8: "q8", q4: "q4" };
async function transformersJs({ format, device, ids, decode }) {
  env.allowLocalModels = false;
  env.remoteHost = `${location.origin}/models/onnx/`;
  env.remotePathTemplate = "{model}/";
  env.backends.onnx.wasm.wasmPaths = { mjs: "/ort/ort-wasm-simd-threaded.asyncify.mjs",
                                       wasm: "/ort/ort-wasm-simd-threaded.asyncify.wasm" };
  env.backends.onnx.wasm.numThreads = navigator.hardwareConcurrency;
  const t0 = now();
  const model = await AutoModelForCausalLM.from_pretrained("qwen3moe-bench", { device, dtype: TRANSFORMERS_DTYPE[format] });
  const loadSeconds = (now() - t0) / 1000;
  const backend = device === "webgpu" ? "WebGPU (ONNX Runtime Web)" : `wasm, ${navigator.hardwareConcurrency} threads`;
  if (!decode) {
    await model.dispose();
    return { loadSeconds, backend };
  }
  const input_ids = new Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const attention_mask = new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
  const times = [];
  let puts = 0;
  const streamer = { put() { if (puts++ > 0) times.push(now()); }, end() {} };    // the first put is the prompt
  const start = now();
  await model.generate({ input_ids, attention_mask, max_new_tokens: decode + 1, min_new_tokens: decode + 1,
                         do_sample: false, streamer });
  await model.dispose();
  return { loadSeconds, backend, promptTokens: ids.length, ...split(start, times) };
}

// wllama: llama.cpp in WebAssembly, every layer offloaded to its WebGPU backend (as its README shows), which
// falls back to its CPU backend where the adapter lacks shader-f16; threads as the page allows. The backend
// that ran is read from llama.cpp's own log ("load_tensors: <device> model buffer size"). GGUF files are
// cached by wllama's own cache (OPFS).
async function wllama({ format, text, decode }) {
  const lines = [];
  const keep = (...args) => lines.push(args.join(" "));
  const w = new Wllama({ default: "/wllama/wllama.wasm" }, { logger: { debug: keep, log: keep, warn: keep, error: keep } });
  const t0 = now();
  await w.loadModelFromUrl(`/models/gguf/${format}.gguf`, { n_ctx: 512, n_batch: 512, useCache: true, n_gpu_layers: 99,
                                                              n_threads: navigator.hardwareConcurrency });
  const loadSeconds = (now() - t0) / 1000;
  if (!decode) {
    await w.exit();
    return { loadSeconds };
  }
  const times = [];
  const start = now();
  const stream = await w.createCompletion({ prompt: text, max_tokens: decode + 1, temperature: 0, ignore_eos: true,
                                            stream: true });
  let timings = null;
  for await (const chunk of stream) {
    if (chunk.timings) timings = chunk.timings;
    if (chunk.choices?.length && chunk.choices[0].finish_reason == null) times.push(now());
  }
  const device = lines.map((l) => /load_tensors:\s+(\S+) model buffer size/.exec(l)?.[1]).find(Boolean) || "?";
  const backend = `${device === "CPU" ? "CPU (wasm)" : device}, ${w.getNumThreads()} thread(s)`;
  await w.exit();
  return { loadSeconds, backend, promptTokens: timings?.prompt_n, ...split(start, times) };
}

const ENGINES = { webmoe, "transformers.js": transformersJs, wllama };

window.runEngine = async (args) => {
  try {
    return await ENGINES[args.engine](args);
  } catch (err) {
    return { error: `${err?.name || "Error"}: ${err?.message || err}` };
  }
};
window.harnessReady = true;
