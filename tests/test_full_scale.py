"""Full-depth checkpoints end to end (issue 23), outside the default run:

    WEBMOE_FULL_DIR=/big/disk pytest -m full_scale tests/test_full_scale.py -s

OLMoE-1B-7B's shapes, every one of its 16 layers (6.9 B parameters, 12.9 GiB of f16), written by
scripts/full_size_checkpoint.py (kept in WEBMOE_FULL_DIR, default /tmp/webmoe-full, for later runs), are
converted to q4 and q8 and run natively with every expert resident and with a quarter of them, each step in
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


@pytest.fixture(scope="module")
def olmoe():
    ckpt = FULL / "olmoe-hf"
    if not (ckpt / "model.safetensors.index.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "full_size_checkpoint.py"), "olmoe", str(ckpt)],
                       check=True, timeout=7200)
    return ckpt


@pytest.mark.parametrize("dtype", ["q4", "q8"])
def test_olmoe_full_depth_converts_and_runs(olmoe, dtype):
    pkg = FULL / f"olmoe-{dtype}"
    conv = python(CONVERT, olmoe, pkg, dtype)
    size = sum(s["size"] for s in json.loads((pkg / "manifest.json").read_text())["shards"])
    print("FULL_SCALE", json.dumps({"model": "olmoe", "dtype": dtype, "step": "convert", "package_bytes": size,
                                    "seconds": round(conv["seconds"], 1), "peak_rss_mib": conv["peak_rss"] >> 20,
                                    "read_gb_s": round(conv["bytes_read"] / conv["seconds"] / 1e9, 3)}))
    runs = {}
    for budget in (1.0, 0.25):
        r = runs[budget] = python(RUN, pkg, budget)
        print("FULL_SCALE", json.dumps({"model": "olmoe", "dtype": dtype, "step": f"run, {budget:.0%} of experts",
                                        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                                           if k != "experts"}, "peak_rss_mib": r["peak_rss"] >> 20,
                                        "hit_rate": r["experts"].get("hit_rate")}))
        assert r["finite"]
    assert runs[1.0]["peak_rss"] <= size + runs[1.0]["kv_bytes"] + MARGIN, (runs[1.0]["peak_rss"] >> 20, size >> 20)
    assert runs[0.25]["peak_rss"] < runs[1.0]["peak_rss"]
    assert runs[0.25]["tokens"] == runs[1.0]["tokens"]
