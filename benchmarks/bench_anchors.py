"""The two throughput figures the seeds publish, measured for webmoe beside theirs:

- routing decisions per second on the GPU at prefill batch sizes (seed 002: 1.7 M routes/s on 10 CPU
  threads): the plan's router logits matmul and router kernel for T tokens at public checkpoints' router
  shapes, random weights, timed over repeated submissions;
- registry reads per second while versions are swapped (seed 000: 18.9 M reads/s): Registry.get in the
  event loop, alone and with a concurrent task swapping the model between two versions.

    .venv/bin/python benchmarks/bench_anchors.py [--tokens 64,512,2048] [--seconds 2]
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
from pathlib import Path

import numpy as np

from webmoe.converter.plan import Plan
from webmoe.converter.quant import encode
from webmoe.engine.device import open_gpu
from webmoe.engine.executor import STORAGE, Executor, Readback, padded

ROOT = Path(__file__).resolve().parent.parent
# (name, hidden, experts, top-k, scoring, normalize)
ROUTERS = [("Mixtral-8x7B", 4096, 8, 2, "softmax", True), ("Qwen3-30B-A3B", 2048, 128, 8, "softmax", True),
           ("DeepSeek-V3 (sigmoid, no groups)", 7168, 256, 8, "sigmoid", True)]


def routes_per_second(gpu, H: int, E: int, K: int, scoring: str, normalize: bool, T: int, seconds: float,
                      with_gate: bool) -> float:
    """with_gate: the router logits matmul [T, H] x [E, H]^T and the top-k kernel; else the top-k alone."""
    plan = Plan({"w": ((E, H), "f32")})
    for name, shape in (("x", (T, H)), ("logits", (T, E)), ("ids", (T, K)), ("wts", (T, K))):
        plan.tensors[name] = (shape, "u32" if name == "ids" else "f32")
    plan.matmul("x", "w", "logits", H, E)
    plan.router("logits", "ids", "wts", E, K, scoring, normalize)
    device = gpu.device
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((T, H), np.float32), "w": rng.standard_normal((E, H), np.float32) * 0.02,
              "logits": np.zeros((T, E), np.float32), "ids": np.zeros((T, K), np.uint32), "wts": np.zeros((T, K), np.float32)}
    buffers = {}
    for name, a in arrays.items():
        words = a.view(np.uint32).reshape(-1) if a.dtype != np.uint32 else a.reshape(-1)
        if name == "w":
            words = np.frombuffer(encode(a, "f32"), np.uint32)
        buffers[name] = device.create_buffer(size=padded(words.nbytes), usage=STORAGE)
        device.queue.write_buffer(buffers[name], 0, words)
    ex = Executor(gpu, {"buffers": {}, "steps": plan.steps}, buffers, {}, {"T": T, "S": 1})
    rb = Readback(device, 16)
    ex.write_params({"T": T})
    first = 0 if with_gate else 1

    def run(reps: int) -> None:
        encoder = device.create_command_encoder()
        for _ in range(reps):
            ex.encode_range(encoder, {"T": T}, first, len(ex.steps))
        encoder.copy_buffer_to_buffer(buffers["ids"], 0, rb.buffer, 0, 16)
        device.queue.submit([encoder.finish()])
        rb.read(16)
    run(2)                                               # compile and warm up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(8)
        reps += 8
    return reps * T / (time.perf_counter() - t0)


async def registry_reads(seconds: float, swapping: bool) -> tuple[float, int]:
    from webmoe.serve.registry import Registry
    demo = ROOT / "demo" / "shakespeare-moe"
    registry = Registry({"m": demo}, max_batch=1)
    stop = False

    async def swapper():
        swaps = 0
        while not stop:
            await registry.swap("m", demo)          # a new version each time, loaded before it serves
            swaps += 1
        return swaps
    task = asyncio.create_task(swapper()) if swapping else None
    reads, t0 = 0, time.perf_counter()
    get = registry.get
    while time.perf_counter() - t0 < seconds:
        for _ in range(100_000):
            get("m")
        reads += 100_000
        await asyncio.sleep(0)                       # let the swapper run between batches of reads
    rate = reads / (time.perf_counter() - t0)
    stop = True
    return rate, (await task) if task else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="64,512,2048")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    gpu = open_gpu(None)
    print(f"adapter: {gpu.description}; {platform.machine()}, Python {platform.python_version()}")
    print("\n| router shape | tokens per pass | decisions/s, top-k of given logits | vs seed 002's 1.7 M/s | "
          "decisions/s with the gate matmul |")
    print("|---|---|---|---|---|")
    for name, H, E, K, scoring, normalize in ROUTERS:
        for T in (int(t) for t in args.tokens.split(",")):
            alone = routes_per_second(gpu, H, E, K, scoring, normalize, T, args.seconds, with_gate=False)
            gated = routes_per_second(gpu, H, E, K, scoring, normalize, T, args.seconds, with_gate=True)
            print(f"| {name}: hidden {H}, {E} experts, top-{K} | {T} | {alone / 1e6:.3f} M | {alone / 1.7e6:.2f}x | "
                  f"{gated / 1e6:.3f} M |")
    print("\n| registry | reads/s | swaps meanwhile | vs seed 000's 18.9 M/s |")
    print("|---|---|---|---|")
    for swapping in (False, True):
        rate, swaps = asyncio.run(registry_reads(args.seconds * 5, swapping))
        print(f"| {'with a task swapping versions' if swapping else 'alone'} | {rate / 1e6:.2f} M | {swaps} | "
              f"{rate / 18.9e6:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
