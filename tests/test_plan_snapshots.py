"""Plan snapshots: each family's plan, built from a config alone (no checkpoint), equals the reviewed
snapshot in tests/snapshots/, so a step, binding, dispatch, geometry constant, record or resource that
changes unintentionally fails here. After an intended change, regenerate: the test warns with the
difference (a unified diff of the JSON, in pytest's warnings summary), to be reviewed before committing:

    WEBMOE_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_plan_snapshots.py

Since a regenerated snapshot is the code's own output, the parts of a plan that follow from the
architecture alone are also checked against counts and shapes derived here by hand from each config
(test_plan_counts_and_shapes_follow_from_the_config), which no regeneration changes.
"""
import difflib
import json
import math
import os
import warnings
from pathlib import Path

import pytest

from webmoe.converter.model_plan import plan_from_config

SNAPSHOTS = Path(__file__).parent / "snapshots"
FAMILIES = sorted(p.name.removesuffix(".config.json") for p in SNAPSHOTS.glob("*.config.json"))


def test_every_family_has_a_snapshot():
    assert FAMILIES == ["deepseek_v3", "gpt_oss", "mixtral", "olmoe", "phimoe", "qwen2_moe", "qwen3_moe"]


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_matches_snapshot(family):
    config = json.loads((SNAPSHOTS / f"{family}.config.json").read_text())
    plan = json.loads(json.dumps(plan_from_config(config, "f16")))     # as the manifest stores it
    path = SNAPSHOTS / f"{family}.plan.json"
    if os.environ.get("WEBMOE_UPDATE_SNAPSHOTS"):
        old, new = path.read_text(), json.dumps(plan, indent=1) + "\n"
        path.write_text(new)
        diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{path.name} (reviewed)",
                                            f"{path.name} (regenerated)", n=2))
        warnings.warn(f"{family}: snapshot regenerated; review the difference:\n{diff}" if diff else
                      f"{family}: snapshot regenerated, unchanged")
    expected = json.loads(path.read_text())
    for key in sorted(set(expected) | set(plan)):
        if key == "steps":
            assert len(plan["steps"]) == len(expected["steps"]), "number of steps changed"
            for got, want in zip(plan["steps"], expected["steps"]):
                assert got == want, f"step {want['label']} changed"
        else:
            assert plan.get(key) == expected.get(key), f"plan {key} changed"


def test_plan_from_config_equals_the_converted_package(tmp_path):
    """The converter writes exactly the plan a config alone gives (mixtral here)."""
    from webmoe.converter.convert import convert
    from tiny_models import save_checkpoint
    from transformers import MixtralConfig, MixtralForCausalLM
    config = json.loads((SNAPSHOTS / "mixtral.config.json").read_text())
    ckpt = save_checkpoint(MixtralForCausalLM, MixtralConfig(**config), tmp_path / "ckpt")
    pkg = convert(ckpt, tmp_path / "pkg", "f16", progress=False)
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["plan"] == json.loads(json.dumps(plan_from_config(json.loads((ckpt / "config.json").read_text()))))


# What each architecture computes per layer, from its papers and model cards (not from the plan builder),
# as webmoe's fused steps state it: attention is 5 steps (norm, q, k and v projections as one matmul,
# storing k and v with rotary applied to k on the way, attention applying rotary to q as it reads it, output
# projection), 2 more where q and k are normalised per head (Qwen3-MoE, OLMoE); DeepSeek-V3's multi-head
# latent attention is 14 (norm, q down-projection and its norm, q's parts without and with rotary position,
# q absorbed into the latent, the latent kv and its norm, the rotary key, rotary on k, storing the latent,
# attention with rotary on q, v up-projection, output). Then the FFN norm, and a MoE block of 5 (router
# logits, top-k with tokens gathered by expert, the experts' gate-up and down, scattering back), plus 4 for
# a shared expert (gate, up, SiLU x up, down) and 2 for its sigmoid gate (Qwen2-MoE), or a dense MLP of 4.
ARCHITECTURE = {
    "mixtral": dict(attention=5, shared=0),
    "phimoe": dict(attention=5, shared=0),
    "gpt_oss": dict(attention=5, shared=0),
    "qwen3_moe": dict(attention=7, shared=0),
    "olmoe": dict(attention=7, shared=0),
    "qwen2_moe": dict(attention=5, shared=4 + 2),
    "deepseek_v3": dict(attention=14, shared=4),
}


def moe_layers(config: dict) -> list[int]:
    n = config["num_hidden_layers"]
    dense = set(config.get("mlp_only_layers") or []) | set(range(config.get("first_k_dense_replace") or 0))
    return [l for l in range(n) if l not in dense]


@pytest.mark.parametrize("family", FAMILIES)
def test_plan_counts_and_shapes_follow_from_the_config(family):
    """Steps (one dispatch each per forward pass), which layers route, and the buffers the architecture
    fixes, each derived from the config by hand."""
    c = json.loads((SNAPSHOTS / f"{family}.config.json").read_text())
    plan = json.loads(json.dumps(plan_from_config(c, "f16")))
    arch, layers, moe = ARCHITECTURE[family], c["num_hidden_layers"], moe_layers(c)
    per_moe, per_dense = arch["attention"] + 1 + 5 + arch["shared"], arch["attention"] + 1 + 4
    assert len(plan["steps"]) == 3 + len(moe) * per_moe + (layers - len(moe)) * per_dense   # + embed, norm, head
    assert [m["layer"] for m in plan["moe_layers"]] == moe
    H, V = c["hidden_size"], c["vocab_size"]
    E = c.get("num_local_experts") or c.get("num_experts") or c["n_routed_experts"]
    K = c["num_experts_per_tok"]
    I = c["moe_intermediate_size"] if "moe_intermediate_size" in c else c["intermediate_size"]
    want = {"h": ["T", H], "logits": ["T", V], "token_mask": ["T", math.ceil(V / 32)], "router_logits": ["T", E],
            "topk_ids": ["T", K], "topk_w": ["T", K], "act": ["T", K, I], "expert_out": ["T", K, H],
            "expert_offsets": [E + 1]}
    assert {name: plan["buffers"][name]["shape"] for name in want} == want
    if family != "deepseek_v3":                       # its cache holds the latent (docs/format.md)
        head = c.get("head_dim") or H // c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or c["num_attention_heads"]
        for l in range(layers):
            assert plan["buffers"][f"k_cache.{l}"]["shape"] == plan["buffers"][f"v_cache.{l}"]["shape"] == ["S", kv * head]
