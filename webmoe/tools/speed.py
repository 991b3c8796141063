"""`webmoe speed`: prefill and decode speed of a package with every expert resident, with the figures that
say how far they are from the adapter's limit, all measured in one run:

- prefill and decode tokens/s over several repetitions (median and spread);
- the bytes a decoded token reads (weights of every dense step, top-k experts per MoE layer, the KV cache
  at the mean position), from the plan and the manifest;
- the adapter's streaming read bandwidth, measured with shaders/stream.wgsl (the faster of its two access
  patterns), and the share of it that decode reaches (bytes per token x tokens/s / bandwidth);
- with profile=True, GPU time per kernel from timestamp queries (a separate, slower run).
"""
from __future__ import annotations

import re
import statistics
import time

import numpy as np
import wgpu

from webmoe.engine.engine import Engine
from webmoe.engine.executor import STORAGE, Readback
from webmoe.engine.generation import GREEDY
from webmoe.engine.profiler import Profiler
from webmoe.engine.shaders import load_kernel

STREAM_WG = 64


def stream_bandwidth(gpu, mib: int = 256, repeats: int = 5) -> dict[str, float]:
    """Bytes per second the adapter reads from a buffer of `mib` MiB (capped by its binding limit), best
    of `repeats` timed passes, in each access pattern of shaders/stream.wgsl: {"interleaved", "runs"}."""
    device = gpu.device
    size = min(mib << 20, gpu.max_binding) // 16 * 16
    n = size // 16
    src = device.create_buffer(size=size, usage=STORAGE)
    lanes = STREAM_WG * (16 if gpu.is_cpu else 1024)
    dst = device.create_buffer(size=4 * lanes, usage=STORAGE)
    params = device.create_buffer(size=16, usage=wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST)
    device.queue.write_buffer(params, 0, np.array([n, lanes, 0, 0], np.uint32))
    rb = Readback(device, 4)
    out = {}
    for pattern in ("interleaved", "runs"):
        kernel = load_kernel("stream", ["INTERLEAVED"] if pattern == "interleaved" else [], {"WG": STREAM_WG})
        pipeline = device.create_compute_pipeline(layout="auto", compute={
            "module": device.create_shader_module(code=kernel.source), "entry_point": "main"})
        group = device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=[
            {"binding": 0, "resource": {"buffer": params}}, {"binding": 1, "resource": {"buffer": src}},
            {"binding": 2, "resource": {"buffer": dst}}])
        best = 0.0
        for i in range(repeats + 1):                 # the first pass warms up
            encoder = device.create_command_encoder()
            cpass = encoder.begin_compute_pass()
            cpass.set_pipeline(pipeline)
            cpass.set_bind_group(0, group)
            cpass.dispatch_workgroups(lanes // STREAM_WG)
            cpass.end()
            encoder.copy_buffer_to_buffer(dst, 0, rb.buffer, 0, 4)
            t0 = time.perf_counter()
            device.queue.submit([encoder.finish()])
            rb.read(4)
            if i:
                best = max(best, size / (time.perf_counter() - t0))
        out[pattern] = best
    return out


def decode_bytes(engine: Engine, pos: int) -> dict[str, int]:
    """Bytes one decoded token reads at position `pos`: every package tensor a plan step binds (once; an
    embedding step reads one row), top_k experts of each MoE layer, and pos rows of every KV cache."""
    manifest = engine.package.manifest
    tensors = manifest["tensors"]
    dense, row = set(), 0
    for step in engine.plan["steps"]:
        for target in step["bind"].values():
            if target in tensors:
                if step["kernel"] == "embed":
                    t = tensors[target]
                    row = max(row, t["size"] // max(t["shape"][0], 1))
                else:
                    dense.add(target)
    moe = manifest["moe"]
    experts = len(moe["moe_layers"]) * moe["top_k"] * moe["expert_layout"]["expert_bytes"]
    out = {"dense": sum(tensors[t]["size"] for t in dense) + row, "experts": experts,
           "kv_cache": engine.memory["kv_per_token"] * pos}
    out["total"] = sum(out.values())
    return out


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def round_trip(gpu, repeats: int = 20) -> float:
    """Seconds from submitting a command buffer that only copies 4 bytes to those bytes mapped on the host
    (median): what each synchronisation with the adapter costs before any work."""
    device = gpu.device
    src = device.create_buffer(size=16, usage=STORAGE)
    rb = Readback(device, 16)
    times = []
    for _ in range(repeats + 1):                     # the first warms up
        encoder = device.create_command_encoder()
        encoder.copy_buffer_to_buffer(src, 0, rb.buffer, 0, 4)
        t0 = time.perf_counter()
        device.queue.submit([encoder.finish()])
        rb.read(4)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def measure(path, prompt: int = 128, tokens: int = 32, repeats: int = 3, adapter: str | None = None,
            profile: bool = False, seed: int = 0, adapter_class: str | None = None) -> dict:
    """adapter_class: the plan variant to run ("gpu", "cpu"; default: the adapter's own)."""
    with Engine.load(path, adapter=adapter, max_seq_len=prompt + tokens + 1, adapter_class=adapter_class) as engine:
        return {"package": str(path), **measure_engine(engine, prompt, tokens, repeats, profile, seed)}


def measure_engine(engine: Engine, prompt: int = 128, tokens: int = 32, repeats: int = 3, profile: bool = False,
                   seed: int = 0) -> dict:
    """web/speed.js's measureSpeed is its twin (the same figures in the browser, `webmoe speed --browser`).
    per_token_ms says where a decoded token's time goes: encode (recording and submitting, the host), wait
    (last submission to the token in hand: the adapter and the round trip), round_trip (an empty
    submission's), generate (a token through engine.generate: tokenizer and stop checks added), kernels
    (GPU time by timestamp queries, with profile)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, engine.vocab_size, prompt).tolist()
    prefill, decode, steps = [], [], []
    engine.prefill(0, ids[:8], 0)                     # compiles and warms every pipeline
    engine.decode([(ids[0], 0, 0)], [GREEDY])
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.prefill(0, ids, 0)
        prefill.append(prompt / (time.perf_counter() - t0))
        # decode as llama-bench's tg measures it: random token ids, one at a time from an empty cache
        # (positions 0 ..), so neither engine replays its own greedy (and repetitive) text
        stream = rng.integers(0, engine.vocab_size, tokens).tolist()
        t0 = time.perf_counter()
        for i, token in enumerate(stream):
            engine.decode([(token, i, 0)], [GREEDY])
            steps.append(engine.last_step)
        decode.append(tokens / (time.perf_counter() - t0))
    generate = []
    for _ in range(repeats):                          # from a one-token prompt: positions 1 .. as the decode's
        times = [time.perf_counter() for _ in engine.generate(ids[:1], max_new_tokens=tokens + 1, temperature=0)]
        if len(times) > 1:                            # (a run that met end-of-sequence at once has no interval)
            generate.append((times[-1] - times[0]) / (len(times) - 1))
    per_token = {"decode": 1e3 / statistics.median(decode),
                 "encode": 1e3 * statistics.median(s["encode_s"] for s in steps),
                 "wait": 1e3 * statistics.median(s["wait_s"] for s in steps),
                 "round_trip": 1e3 * round_trip(engine.gpu),
                 "generate": 1e3 * statistics.median(generate) if generate else float("nan")}
    result = {"adapter": engine.adapter, "plan_variant": engine.adapter_class, "prompt": prompt, "tokens": tokens,
              "experts_resident": not engine.experts.paging, "prefill": _spread(prefill), "decode": _spread(decode),
              "per_token_ms": per_token, "subgroups": engine.gpu.subgroup_size,
              "formats": engine.package.manifest["dtypes"]}
    patterns = stream_bandwidth(engine.gpu)
    bandwidth = max(patterns.values())
    read = decode_bytes(engine, tokens // 2)
    result.update({"bytes_per_token": read, "bandwidth": bandwidth, "bandwidth_patterns": patterns,
                   "bandwidth_share": read["total"] * statistics.median(decode) / bandwidth})
    if profile:
        result["profile"] = profile_run(engine, ids, tokens)
        per_token["kernels"] = sum(row["ms"] for row in result["profile"]["decode"])
    return result


def profile_run(engine: Engine, ids: list[int], tokens: int) -> dict[str, list[dict]]:
    """GPU time per step role (a step's label without its layer, e.g. q_proj, experts.gate_up) for the
    prefill of ids and for each decoded token: [{role, kernel, calls, ms, share}] per phase."""
    plan = engine.plan
    kernels = {s.get("label") or s["kernel"]: s["kernel"] for s in plan["steps"] + plan["sampler"]}
    out = {}
    engine.profiler = Profiler(engine.gpu.device)
    try:
        token = engine.prefill(0, ids, 0)
        engine.profiler.collect()
        out["prefill"] = _by_role(engine.profiler.seconds, kernels, 1)
        engine.profiler.seconds = {}
        for i in range(tokens):
            [token] = engine.decode([(token, len(ids) + i, 0)], [GREEDY])
            engine.profiler.collect()
        out["decode"] = _by_role(engine.profiler.seconds, kernels, tokens)
    finally:
        engine.profiler = None
    return out


def _by_role(seconds: dict[str, list[float]], kernels: dict[str, str], per: int) -> list[dict]:
    roles: dict[str, dict] = {}
    for label, times in seconds.items():
        role = re.sub(r"^L\d+\.", "", label)
        r = roles.setdefault(role, {"role": role, "kernel": kernels.get(label, "?"), "calls": 0, "s": 0.0})
        r["calls"] += len(times)
        r["s"] += sum(times)
    total = sum(r["s"] for r in roles.values()) or 1.0
    rows = sorted(roles.values(), key=lambda r: -r["s"])
    return [{"role": r["role"], "kernel": r["kernel"], "calls": r["calls"] / per, "ms": 1e3 * r["s"] / per,
             "share": r["s"] / total} for r in rows]


def table(r: dict) -> str:
    p, d, t = r["prefill"], r["decode"], r["per_token_ms"]
    lines = [
        f"{r['package']} on {r['adapter']} ({r['plan_variant']} plan; experts {r['formats']['experts']}, attention "
        f"{r['formats']['attention']}; subgroups: {r['subgroups'] or 'none'}; every expert resident: "
        f"{'yes' if r['experts_resident'] else 'no'})",
        f"prefill {r['prompt']} tokens: {p['median']:.2f} tokens/s (min {p['min']:.2f}, max {p['max']:.2f}, "
        f"{len(p['runs'])} runs)",
        f"decode {r['tokens']} tokens:  {d['median']:.2f} tokens/s (min {d['min']:.2f}, max {d['max']:.2f})",
        f"a decoded token: {t['decode']:.2f} ms = encode {t['encode']:.2f} (host) + wait {t['wait']:.2f} (submission "
        f"to token; an empty submission's round trip {t['round_trip']:.2f})"
        + (f"; kernels {t['kernels']:.2f} (timestamp queries)" if "kernels" in t else "")
        + f"; through generate() {t['generate']:.2f}"
        + (f"; through the page's API (worker messages) {t['api']:.2f}" if t.get("api") is not None else ""),
    ]
    if "bytes_per_token" in r:                  # measured natively only
        b = r["bytes_per_token"]
        lines += [
            f"bytes read per decoded token: {b['total'] / 2**20:.2f} MiB (dense weights {b['dense'] / 2**20:.2f}, "
            f"experts {b['experts'] / 2**20:.2f}, KV cache {b['kv_cache'] / 2**20:.2f})",
            f"adapter streaming bandwidth: {r['bandwidth'] / 1e9:.2f} GB/s (interleaved lanes "
            f"{r['bandwidth_patterns']['interleaved'] / 1e9:.2f}, contiguous runs "
            f"{r['bandwidth_patterns']['runs'] / 1e9:.2f}); decode reaches {r['bandwidth_share']:.0%} of it "
            f"(bound: {r['bandwidth'] / b['total']:.1f} tokens/s)"]
    for phase, rows in (r.get("profile") or {}).items():
        lines.append(f"\nGPU time per {'token' if phase == 'decode' else 'prompt'} ({phase}, timestamp queries):")
        lines.append(f"{'step':28s} {'kernel':14s} {'calls':>6s} {'ms':>9s} {'share':>6s}")
        for row in rows:
            lines.append(f"{row['role']:28s} {row['kernel']:14s} {row['calls']:6.0f} {row['ms']:9.3f} "
                         f"{row['share']:6.1%}")
    return "\n".join(lines)
