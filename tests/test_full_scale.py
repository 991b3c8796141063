"""Full-depth checkpoints end to end (issue 23), outside the default run:

    WEBMOE_FULL_DIR=/big/disk pytest -m full_scale tests/test_full_scale.py -s

OLMoE-1B-7B's shapes, every one of its 16 layers (6.9 B parameters, 12.9 GiB of f16), and gpt-oss-20b's
(24 layers, 21 B parameters, experts in MXFP4, 12.8 GiB), written by scripts/full_size_checkpoint.py
(kept in WEBMOE_FULL_DIR, default /tmp/webmoe-full, for later runs), are converted (OLMoE to q4 and q8,
gpt-oss with its MXFP4 experts kept) and run natively with every expert resident and with a quarter of them, each step in
a process of its own so that its peak memory is its own. Checked: the packages load; a load's peak
resident memory stays within the package, the KV cache and a stated margin; the logits are finite; the
greedy tokens are the same at both expert budgets (paging never changes the numbers). Each step prints a
`FULL_SCALE {...}` line; docs/benchmarks.md records them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.full_scale
ROOT = Path(__file__).resolve().parent.parent
FULL = Path(os.environ.get("WEBMOE_FULL_DIR", "/tmp/webmoe-full"))
MARGIN = 1 << 30       # the process (Python, wgpu, the compiler in lavapipe) and the buffers of one chunk

CONVERT = """
import json, sys, time
from webmoe.converter.convert import convert
stats = {}
convert(sys.argv[1], sys.argv[2], dtype=sys.argv[3], progress=False, stats=stats, force=True)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({**stats, "peak_rss": int(hwm.split()[1]) * 1024}))
"""
RUN = """
import json, sys, time
import numpy as np
from webmoe import Engine
budget = float(sys.argv[2])
moe = json.load(open(sys.argv[1] + "/manifest.json"))["moe"]
experts = len(moe["moe_layers"]) * moe["num_experts"]
kw = {} if budget >= 1 else {"expert_cache_bytes": int(budget * experts) * moe["expert_layout"]["expert_bytes"]}
t = time.perf_counter()
engine = Engine.load(sys.argv[1], max_seq_len=512, **kw)
load_s = time.perf_counter() - t
prompt = list(range(10, 42))
logits = engine.logits(prompt[:4])
t = time.perf_counter()
stamps, tokens = [], []
for tok in engine.generate(prompt, max_new_tokens=9, temperature=0):     # the first token ends the prefill
    stamps.append(time.perf_counter() - t)
    tokens.append(tok.id)
prefill_s, decode_s = stamps[0], stamps[-1] - stamps[0]
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"load_s": load_s, "prefill_tok_s": len(prompt) / prefill_s, "decode_tok_s": 8 / decode_s,
                  "finite": bool(np.isfinite(logits).all()), "tokens": tokens, "peak_rss": int(hwm.split()[1]) * 1024,
                  "kv_bytes": engine.memory["kv_cache"], "experts": engine.expert_stats()["total"]}))
"""


def python(code: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=7200)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def checkpoint(family: str) -> Path:
    """The full-depth checkpoint of `family` in WEBMOE_FULL_DIR, written the first time it is asked for."""
    ckpt = FULL / f"{family}-hf"
    if not (ckpt / "model.safetensors.index.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "full_size_checkpoint.py"), family, str(ckpt)],
                       check=True, timeout=7200)
    return ckpt


def package(family: str, dtype: str) -> Path:
    """The converted package in WEBMOE_FULL_DIR, converted the first time it is asked for (the conversion
    test converts anew, to measure it)."""
    pkg = FULL / f"{family}-{dtype}"
    if not (pkg / "manifest.json").exists():
        python(CONVERT, checkpoint(family), pkg, dtype)
    return pkg


# (family, preset): OLMoE-1B-7B quantised both ways; gpt-oss-20b with the default preset, which keeps its
# experts in MXFP4 as the checkpoint stores them (f16 elsewhere)
CASES = [("olmoe", "q4"), ("olmoe", "q8"), ("gpt_oss", "f16")]


@pytest.mark.parametrize("family,dtype", CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_full_depth_converts_and_runs(family, dtype):
    pkg = FULL / f"{family}-{dtype}"
    conv = python(CONVERT, checkpoint(family), pkg, dtype)
    size = sum(s["size"] for s in json.loads((pkg / "manifest.json").read_text())["shards"])
    print("FULL_SCALE", json.dumps({"model": family, "dtype": dtype, "step": "convert", "package_bytes": size,
                                    "seconds": round(conv["seconds"], 1), "peak_rss_mib": conv["peak_rss"] >> 20,
                                    "read_gb_s": round(conv["bytes_read"] / conv["seconds"] / 1e9, 3)}))
    runs = {}
    for budget in (1.0, 0.25):
        r = runs[budget] = python(RUN, pkg, budget)
        print("FULL_SCALE", json.dumps({"model": family, "dtype": dtype, "step": f"run, {budget:.0%} of experts",
                                        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                           if k != "experts"}, "peak_rss_mib": r["peak_rss"] >> 20,
                                        "hit_rate": r["experts"].get("hit_rate")}))
        assert r["finite"]
    assert runs[1.0]["peak_rss"] <= size + runs[1.0]["kv_bytes"] + MARGIN, (runs[1.0]["peak_rss"] >> 20, size >> 20)
    assert runs[0.25]["peak_rss"] < runs[1.0]["peak_rss"]
    assert runs[0.25]["tokens"] == runs[1.0]["tokens"]


# --- OLMoE-1B-7B q4 in Chromium (SwiftShader), served over a throttled link ---------------------------------

LINK = 20e6                       # bytes/s: a home connection
PROMPT = list(range(10, 22))      # 12 tokens
GREEDY = 16
NATIVE_REFERENCE = """
import json, sys, time
from webmoe import Engine
prompt, n = json.loads(sys.argv[2]), int(sys.argv[3])
engine = Engine.load(sys.argv[1], max_seq_len=512, observe_routing=True)
t = time.perf_counter()
engine.logits(prompt)
prefill_s = time.perf_counter() - t
routed = sum(int((u > 0).sum()) for u in engine.experts.usage.values())
tokens, stamps = [], []
for tok in engine.generate(prompt, max_new_tokens=n, temperature=0):
    tokens.append(tok.id)
    stamps.append(time.perf_counter())
print(json.dumps({"prefill_s": prefill_s, "routed_experts": routed, "tokens": tokens,
                  "decode_tok_s": (n - 1) / (stamps[-1] - stamps[0])}))
"""
BROWSER_RUN = """async ([manifest, options, ids, n]) => {
  const t0 = performance.now();
  const webmoe = await import('/web/dist/standalone/webmoe.js');
  const e = await webmoe.load(manifest, options);
  const load_s = (performance.now() - t0) / 1000;
  const atLoad = (await e.expertStats()).tiers.network;
  const run = async (count) => {        // seconds from the prompt to each token, and the tokens
    const start = performance.now(), stamps = [], tokens = [];
    for await (const t of e.generate(ids, {maxNewTokens: count, temperature: 0})) {
      stamps.push((performance.now() - start) / 1000);
      tokens.push(t.id);
    }
    return {stamps, tokens};
  };
  const first = await run(n);
  const again = n > 4 ? await run(n) : null;         // every expert the answer needs is local now
  const stats = await e.expertStats();
  const cached = (await webmoe.listCached()).find((c) => c.url === new URL(manifest, location.href).href);
  return {load_s, atLoad, first, again, tiers: stats.tiers, total: stats.total, ephemeral: e.ephemeral,
          opfs_bytes: cached ? cached.bytes : 0, adapter: e.adapter};
}"""


def chromium_memory() -> dict:
    """Peak resident memory (VmHWM, MiB) of the running Chromium's renderer and GPU processes."""
    peaks = {"renderer": 0, "gpu-process": 0}
    for proc in Path("/proc").iterdir():
        try:       # Chromium's child processes rewrite their command line as one space-separated string
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
            status = (proc / "status").read_text()
        except (OSError, ValueError):
            continue
        kind = next((a.split("=", 1)[1] for a in cmd if a.startswith("--type=")), None)
        if cmd and "chromium" in cmd[0] and kind in peaks:
            hwm = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
            peaks[kind] = max(peaks[kind], int(hwm.split()[1]) >> 10)
    return peaks


def test_olmoe_q4_in_the_browser_over_a_home_connection():
    """The in-page API loads OLMoE-1B-7B q4 from `webmoe serve`, shards sent at 20 MB/s, experts on demand
    within an OPFS budget of half the package: the first 16 greedy tokens are the native engine's; the
    model's OPFS folder stays within its budget; a reload reads the dense shards from OPFS (no network).
    Prints time to first token beside its target (the routed experts' bytes over the link, times 1.2, plus
    the native prefill), decode while experts arrive and once they are in, process memory."""
    from webmoe.serve.server import create_app
    from webmoe.tools.headless import Throttle, browser, serving
    pkg = package("olmoe", "q4")
    m = json.loads((pkg / "manifest.json").read_text())
    size = sum(s["size"] for s in m["shards"])
    expert_bytes = max(s["size"] for s in m["shards"] if s["kind"] == "expert")
    native = python(NATIVE_REFERENCE, pkg, json.dumps(PROMPT), GREEDY)
    budget = size // 2
    options = {"expertsOnDemand": True, "opfsBudgetBytes": budget, "maxSeqLen": 512}
    throttle = Throttle(LINK)
    app = create_app([pkg], api=False)
    app.middlewares.append(throttle.middleware)
    manifest = f"/models/{pkg.name}/manifest.json"
    with serving(app) as url, browser() as ctx:
        page = ctx.new_page()
        page.goto(url + "/")
        first = page.evaluate(BROWSER_RUN, [manifest, options, PROMPT, GREEDY])
        memory = chromium_memory()
        page.close()
        page = ctx.new_page()
        page.goto(url + "/")
        reload = page.evaluate(BROWSER_RUN, [manifest, options, PROMPT, 2])
    routed_bytes = native["routed_experts"] * expert_bytes
    target = 1.2 * routed_bytes / LINK + native["prefill_s"]
    f, a = first["first"], first["again"]
    print("FULL_SCALE", json.dumps({
        "model": "olmoe", "dtype": "q4", "step": "browser, experts on demand, 20 MB/s", "adapter": first["adapter"],
        "load_s": round(first["load_s"], 1), "ttft_s": round(f["stamps"][0], 1), "ttft_target_s": round(target, 1),
        "routed_experts": native["routed_experts"], "routed_mb": round(routed_bytes / 1e6),
        "native_prefill_s": round(native["prefill_s"], 1), "native_decode_tok_s": round(native["decode_tok_s"], 3),
        "decode_tok_s_arriving": round((len(f["stamps"]) - 1) / (f["stamps"][-1] - f["stamps"][0]), 3),
        "ttft_s_local": round(a["stamps"][0], 1),
        "decode_tok_s_local": round((len(a["stamps"]) - 1) / (a["stamps"][-1] - a["stamps"][0]), 3),
        "network_mb": round(first["tiers"]["network"]["bytes"] / 1e6), "opfs_mib": first["opfs_bytes"] >> 20,
        "budget_mib": budget >> 20, "renderer_peak_mib": memory["renderer"], "gpu_process_peak_mib": memory["gpu-process"],
        "hit_rate": first["total"].get("hit_rate"), "prediction_precision": first["total"].get("precision"),
        "prediction_recall": first["total"].get("recall"), "reload_load_s": round(reload["load_s"], 1),
        "reload_network_mb_at_load": round(reload["atLoad"]["bytes"] / 1e6, 1),
        "reload_ttft_s": round(reload["first"]["stamps"][0], 1)}))
    assert f["tokens"] == native["tokens"] == a["tokens"]
    assert first["ephemeral"] is None and first["opfs_bytes"] <= budget + 65536
    assert reload["atLoad"]["bytes"] == 0 and reload["first"]["tokens"] == native["tokens"][:2]


def test_gpt_oss_in_the_browser():
    """gpt-oss-20b (MXFP4 experts, f16 elsewhere: 3.6 GB of dense weights) in Chromium on SwiftShader, whose
    limits (1 GiB bindings and buffers, no shader-f16) allow it: the in-page API loads it with experts on
    demand from a local server (no throttle: at 20 MB/s the dense weights alone take three minutes) and
    greedy-decodes the native engine's first tokens for a short prompt."""
    from webmoe.serve.server import create_app
    from webmoe.tools.headless import browser, serving
    pkg = package("gpt_oss", "f16")
    prompt, n = PROMPT[:4], 2
    native = python(NATIVE_REFERENCE, pkg, json.dumps(prompt), n)
    with serving(create_app([pkg], api=False)) as url, browser() as ctx:
        page = ctx.new_page()
        page.goto(url + "/")
        r = page.evaluate(BROWSER_RUN, [f"/models/{pkg.name}/manifest.json", {"expertsOnDemand": True, "maxSeqLen": 512},
                                        prompt, n])
        memory = chromium_memory()
    print("FULL_SCALE", json.dumps({
        "model": "gpt_oss", "dtype": "f16", "step": "browser, experts on demand, local server", "adapter": r["adapter"],
        "load_s": round(r["load_s"], 1), "ttft_s": round(r["first"]["stamps"][0], 1),
        "native_prefill_s": round(native["prefill_s"], 1), "network_mb": round(r["tiers"]["network"]["bytes"] / 1e6),
        "renderer_peak_mib": memory["renderer"], "gpu_process_peak_mib": memory["gpu-process"]}))
    assert r["first"]["tokens"] == native["tokens"]
