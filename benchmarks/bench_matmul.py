"""One matrix kernel step alone, natively (lavapipe) and in headless Chromium (SwiftShader), under several
geometries: what a change to shaders/matmul.wgsl or its geometry buys before a whole model is measured.

    .venv/bin/python benchmarks/bench_matmul.py [--K 1024] [--N 1536] [--tokens 64,1] [--formats f16,q8,q4]
        [--geometry LANES=64,ROWS=64 --geometry LANES=16,ROWS=256] [--reps 11] [--shaders DIR]

The step is the plan's own (converter/plan.py's Plan.matmul with the geometry overridden: defines, constants,
dispatch and Params as a package states them), its weights N x K random values encoded in the format
(converter/quant.py), x random. Each adapter records the one dispatch, submits it and waits for it `reps`
times after a warm-up; prints the median in ms and GFLOP/s (2 T K N per call) and each geometry's ratio to
the first. The default shape is the 72 M bench model's joined q/k/v projection (docs/benchmarks.md).
`--shaders DIR` reads the kernels from DIR instead of shaders/ (an earlier commit's, from `git archive REV
shaders | tar -x -C DIR/..`); a geometry's RED_VALUES then overrides the plan's, for kernels that sized it
otherwise.
"""
from __future__ import annotations

import argparse
import statistics
import struct
import time
from pathlib import Path

import numpy as np

from webmoe.converter.plan import Plan
from webmoe.converter.quant import encode
from webmoe.engine.executor import padded
from webmoe.engine.shaders import SHADER_DIR, kernel_of, preprocess
from webmoe.format.expr import evaluate

PAGE = """async ([source, buffers, params, dispatch, reps]) => {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter.requestDevice();
  const module = device.createShaderModule({code: source});
  for (const m of (await module.getCompilationInfo()).messages) if (m.type === 'error') throw new Error(m.message);
  const pipeline = device.createComputePipeline({layout: 'auto', compute: {module, entryPoint: 'main'}});
  const entries = [];
  const make = (binding, bytes, usage) => {
    const buffer = device.createBuffer({size: bytes.length, usage: usage | GPUBufferUsage.COPY_DST});
    device.queue.writeBuffer(buffer, 0, new Uint8Array(bytes));
    entries.push({binding, resource: {buffer}});
  };
  make(0, params, GPUBufferUsage.UNIFORM);
  for (const [binding, bytes] of buffers) make(binding, bytes, GPUBufferUsage.STORAGE);
  const group = device.createBindGroup({layout: pipeline.getBindGroupLayout(0), entries});
  const times = [];
  for (let r = 0; r <= reps; r++) {
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(...dispatch);
    pass.end();
    const t0 = performance.now();
    device.queue.submit([encoder.finish()]);
    await device.queue.onSubmittedWorkDone();
    times.push(performance.now() - t0);
  }
  device.destroy();
  return times.slice(1);
}"""


def matmul_case(K: int, N: int, T: int, dtype: str, geometry: dict, shaders: Path = SHADER_DIR) -> tuple:
    """(WGSL source, [(binding, bytes)], params bytes, workgroups) of the plan's matmul step."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((N, K)) * 0.02).astype(np.float32)
    plan = Plan({"w": ((N, K), dtype)}, {"matmul": geometry})
    plan.buffer("x", ["T", K])
    plan.buffer("y", ["T", N])
    plan.matmul("x", "w", "y", K, N)
    step = plan.steps[0]
    consts = {**step["consts"], **{k: v for k, v in geometry.items() if k == "RED_VALUES"}}
    kernel = kernel_of("matmul", frozenset(step["defines"]), tuple(sorted(consts.items())),
                       preprocess("matmul", frozenset(step["defines"]), consts, read=lambda f: (shaders / f).read_text()))
    env = {"T": T}
    params = b"".join(struct.pack("<f" if t == "f32" else "<I", evaluate(step["params"][f], env)) for f, t in kernel.params)
    data = {"x": rng.standard_normal((T, K)).astype(np.float32).tobytes(), "w": encode(w, dtype),
            "y": bytes(T * N * 4)}
    buffers = [(kernel.bindings[name].index, data[target] + bytes(padded(len(data[target])) - len(data[target])))
               for name, target in step["bind"].items()]
    params += bytes(-len(params) % 16)
    return kernel.source, buffers, params, [evaluate(d, env) for d in step["dispatch"]]


def run_native(source, buffers, params, dispatch, reps: int) -> list[float]:
    import wgpu
    device = wgpu.gpu.request_adapter_sync(power_preference="high-performance").request_device_sync()
    pipeline = device.create_compute_pipeline(layout="auto", compute={
        "module": device.create_shader_module(code=source), "entry_point": "main"})
    entries = [{"binding": 0, "resource": {"buffer": device.create_buffer_with_data(
        data=params, usage=wgpu.BufferUsage.UNIFORM)}}]
    for binding, data in buffers:
        buf = device.create_buffer_with_data(data=data, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
        entries.append({"binding": binding, "resource": {"buffer": buf}})
    group = device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
    times = []
    for _ in range(reps + 1):
        encoder = device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        compute.set_pipeline(pipeline)
        compute.set_bind_group(0, group)
        compute.dispatch_workgroups(*dispatch)
        compute.end()
        t0 = time.perf_counter()
        device.queue.submit([encoder.finish()])
        device.queue.read_buffer(buf, 0, 4)         # waits for the dispatch
        times.append((time.perf_counter() - t0) * 1e3)
    device.destroy()
    return times[1:]


class Browser:
    def __enter__(self):
        from webmoe.tools.headless import CHROMIUM, FLAGS, playwright
        self.chromium = playwright().chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        self.page = self.chromium.new_page()
        # WebGPU needs a secure context: an empty page at a localhost address, answered by Playwright
        self.page.route("http://localhost:9/**", lambda route: route.fulfill(body="<html></html>", content_type="text/html"))
        self.page.goto("http://localhost:9/")
        return self

    def run(self, source, buffers, params, dispatch, reps: int) -> list[float]:
        return self.page.evaluate(PAGE, [source, [[b, list(d)] for b, d in buffers], list(params), dispatch, reps])

    def __exit__(self, *exc):
        self.chromium.close()


def parse_geometry(text: str) -> dict:
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--K", type=int, default=1024)
    ap.add_argument("--N", type=int, default=1536)
    ap.add_argument("--tokens", default="64,1")
    ap.add_argument("--formats", default="f16,q8,q4")
    ap.add_argument("--geometry", action="append", type=parse_geometry,
                    help="matmul geometry overrides, e.g. LANES=64,ROWS=64 (repeat to compare; default: the plan's)")
    ap.add_argument("--adapters", default="native,browser")
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--shaders", type=Path, default=SHADER_DIR, help="read the kernels from here")
    a = ap.parse_args()
    geometries = a.geometry or [{}]
    browser = Browser().__enter__() if "browser" in a.adapters else None
    try:
        print(f"matmul K={a.K} N={a.N}: median ms (GFLOP/s), ratio to the first geometry")
        for adapter in a.adapters.split(","):
            for T in map(int, a.tokens.split(",")):
                for dtype in a.formats.split(","):
                    first = None
                    for g in geometries:
                        case = matmul_case(a.K, a.N, T, dtype, g, a.shaders)
                        ms = statistics.median(run_native(*case, a.reps) if adapter == "native" else browser.run(*case, a.reps))
                        first = first or ms
                        print(f"{adapter:8} T={T:<4} {dtype:4} {g or 'plan geometry'}: {ms:8.2f} ms "
                              f"({2 * T * a.K * a.N / ms / 1e6:6.2f} GFLOP/s)  {first / ms:5.2f}x", flush=True)
    finally:
        if browser:
            browser.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
