"""`webmoe speed`: its figures are consistent with the package they describe (no timing is asserted)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from webmoe.format.expr import evaluate, variables
from webmoe.engine.package import Package

DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"


def run_speed(tmp_path_factory, *flags):
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    r = subprocess.run([sys.executable, "-m", "webmoe", "speed", str(DEMO), "--prompt", "9", "--tokens", "3",
                        "--repeats", "2", "--profile", "--json", str(out), *flags], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text()), r.stdout


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    return run_speed(tmp_path_factory)


@pytest.fixture(scope="module", params=["native", "browser"])
def either(request, tmp_path_factory):
    """The figures of the native engine, or of web/speed.js in headless Chromium (--browser)."""
    return request.getfixturevalue("figures") if request.param == "native" else \
        run_speed(tmp_path_factory, "--browser")


def test_bytes_per_token_follow_the_manifest(figures):
    """Dense bytes: every tensor a non-embedding step binds plus one embedding row; experts: top-k of each
    MoE layer; KV cache: every position-sized plan buffer at the mean decode position."""
    r, _ = figures
    m = Package(DEMO).manifest
    embed = m["tensors"]["model.embed_tokens.weight"]
    bound = {t for s in m["plan"]["steps"] if s["kernel"] != "embed" for t in s["bind"].values() if t in m["tensors"]}
    moe, hf = m["moe"], m["hf_config"]
    kv_per_position = sum(b.get("S", 0) for b in m["plan"]["resources"]["buffers"].values())
    # f32 keys and values of every layer's KV heads (the checkpoint's own config)
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    assert kv_per_position == 2 * 4 * hf["num_hidden_layers"] * hf["num_key_value_heads"] * head_dim
    want = {"dense": sum(m["tensors"][t]["size"] for t in bound) + embed["size"] // embed["shape"][0],
            "experts": len(moe["moe_layers"]) * moe["top_k"] * moe["expert_layout"]["expert_bytes"],
            "kv_cache": kv_per_position * (3 // 2)}          # decode runs from an empty cache (as llama-bench)
    want["total"] = sum(want.values())
    assert r["bytes_per_token"] == want
    assert r["experts_resident"] and r["bandwidth"] > 0 and r["bandwidth_share"] > 0
    # (the share is bytes per token x tokens/s / the adapter's copy bandwidth: a figure, not asserted; the
    # bytes per token it uses are the ones checked above against the manifest)
    assert len(r["prefill"]["runs"]) == len(r["decode"]["runs"]) == 2


def test_profile_times_every_step_of_a_token(either):
    """Decode's profile has each role of the plan's steps (label without its layer) with as many calls
    per token as the plan has steps dispatched at T = 1, the sampler's included; shares add up to 1; in
    both runtimes (profiler.py and its twin profiler.js)."""
    r, stdout = either
    m = Package(DEMO).manifest
    env = {"T": 1, "logit_row0": 0, "n_logits": 1, "masked": 0, "sampling": 0, "bank_experts": m["moe"]["num_experts"]}
    want = Counter()
    for s in m["plan"]["steps"] + m["plan"]["sampler"]:
        if min(evaluate(d, env) for d in s["dispatch"]) > 0:
            want[re.sub(r"^L\d+\.", "", s.get("label") or s["kernel"])] += 1     # a repeated step: one pass
    decode = {row["role"]: row for row in r["profile"]["decode"]}
    assert {k: v["calls"] for k, v in decode.items()} == dict(want)
    assert sum(v["share"] for v in decode.values()) == pytest.approx(1.0)
    assert all(v["ms"] >= 0 for v in decode.values())
    assert "GPU time per token (decode, timestamp queries)" in stdout


def test_a_decoded_tokens_time_is_split_in_both_runtimes(either):
    """per_token_ms: the engine's own split of each decode (host encode, wait for the token), an empty
    submission's round trip, generate()'s per-token time and the kernels' sum, named alike natively and
    in the browser (which adds the page API's, through the worker); positive, and the kernels' sum is the
    profile's."""
    r, stdout = either
    t = r["per_token_ms"]
    want = {"decode", "encode", "wait", "round_trip", "generate", "kernels"} | ({"api"} if "api" in t else set())
    assert set(t) == want and ("api" in t) == r["adapter"].startswith("google")       # Chromium's adapter
    assert all(v > 0 for v in t.values())
    assert t["kernels"] == pytest.approx(sum(row["ms"] for row in r["profile"]["decode"]))
    assert "a decoded token:" in stdout


def test_min_expressions():
    """{"min": [a, b]}: the expert steps' dispatch along y, no more experts than pairs."""
    e = {"min": ["bank_experts", ["T", 8, 1]]}
    assert evaluate(e, {"bank_experts": 128, "T": 1}) == 8
    assert evaluate(e, {"bank_experts": 128, "T": 64}) == 128
    assert variables(e) == {"bank_experts", "T"}
    for bad in ({"min": [1]}, {"max": [1, 2]}, {"min": [1, 2], "x": 0}):
        with pytest.raises(ValueError):
            evaluate(bad, {})
    assert np.isscalar(evaluate({"min": [3, 4]}, {}))
