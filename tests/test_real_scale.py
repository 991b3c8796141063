"""Public checkpoints' exact dimensions (hidden size, head layout, expert count and width, vocabulary), with
one or two layers and random weights: converted, loaded on this adapter and compared with transformers.
OLMoE-1B-7B runs in every test run; the others are marked `real_scale` (slow: `pytest -m real_scale`).
Each prints its figures (convert time, peak RSS of the conversion, load time, decode speed), which
docs/benchmarks.md records.

The plans of the full-size checkpoints (all layers) are checked from their configs alone: no binding above
128 MiB, and the KV bytes per token of MLA's latent cache."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers as tf

from parity import assert_logits_close, reference_logits
from webmoe import Engine
from webmoe.engine.generation import GREEDY
from webmoe.converter.model_plan import plan_from_config
from tiny_models import save_checkpoint

NO_IDS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 4096,
            "short_factor": [1.0 + 0.01 * i for i in range(64)], "long_factor": [1.5 + 0.1 * i for i in range(64)],
            "short_mscale": 1.243163121016122, "long_mscale": 1.243163121016122}
# (model class, config of the public checkpoint with its layers cut, the checkpoint it copies)
REAL = {
    "olmoe": (tf.OlmoeForCausalLM, dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_attention_heads=16,
                                        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                                        max_position_embeddings=4096), "OLMoE-1B-7B-0924"),
    "mixtral": (tf.MixtralForCausalLM, dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                            num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                                            num_experts_per_tok=2, rope_theta=1e6, max_position_embeddings=32768),
                "Mixtral-8x7B-v0.1"),
    "qwen3_moe": (tf.Qwen3MoeForCausalLM, dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                                               moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4,
                                               head_dim=128, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                                               rope_theta=1e6, max_position_embeddings=40960), "Qwen3-30B-A3B"),
    "qwen2_moe": (tf.Qwen2MoeForCausalLM, dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632,
                                               moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                                               num_attention_heads=16, num_key_value_heads=16, num_experts=60,
                                               num_experts_per_tok=4, max_position_embeddings=8192), "Qwen1.5-MoE-A2.7B"),
    "phimoe": (tf.PhimoeForCausalLM, dict(vocab_size=32064, hidden_size=4096, intermediate_size=6400,
                                          num_attention_heads=32, num_key_value_heads=8, num_local_experts=16,
                                          num_experts_per_tok=2, router_jitter_noise=0.01, attention_bias=True,
                                          lm_head_bias=True, max_position_embeddings=131072, rope_parameters=LONGROPE),
               "Phi-3.5-MoE-instruct"),
    "deepseek_v3": (tf.DeepseekV3ForCausalLM, dict(vocab_size=163840, hidden_size=2048, intermediate_size=11264,
                                                   moe_intermediate_size=1408, num_attention_heads=16,
                                                   num_key_value_heads=16, n_routed_experts=64, num_experts_per_tok=6,
                                                   n_group=1, topk_group=1, first_k_dense_replace=1, n_shared_experts=2,
                                                   kv_lora_rank=512, q_lora_rank=None, qk_rope_head_dim=64,
                                                   qk_nope_head_dim=128, v_head_dim=128, routed_scaling_factor=2.446,
                                                   rope_theta=50000.0, max_position_embeddings=8192, num_hidden_layers=2),
                    "Moonlight-16B-A3B (DeepSeek-V3 architecture)"),
    "gpt_oss": (tf.GptOssForCausalLM, dict(vocab_size=201088, hidden_size=2880, intermediate_size=2880,
                                           num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                                           num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
                                           max_position_embeddings=131072), "gpt-oss-20b"),
}
CONFIGS = {"olmoe": tf.OlmoeConfig, "mixtral": tf.MixtralConfig, "qwen3_moe": tf.Qwen3MoeConfig,
           "qwen2_moe": tf.Qwen2MoeConfig, "phimoe": tf.PhimoeConfig, "deepseek_v3": tf.DeepseekV3Config,
           "gpt_oss": tf.GptOssConfig}
# peak RSS from VmHWM: ru_maxrss would include the forking pytest process (it survives exec on Linux)
CONVERT = """
import json, sys
from webmoe.converter.convert import convert
stats = {}
convert(sys.argv[1], sys.argv[2], dtype=sys.argv[3], progress=False, stats=stats)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
stats["peak_rss"] = int(hwm.split()[1]) * 1024
print(json.dumps(stats))
"""


def config_of(family: str, layers: int | None = None):
    model_cls, kw, source = REAL[family]
    kw = {"num_hidden_layers": 1, "initializer_range": 0.02, **kw, **NO_IDS}
    if layers:
        kw["num_hidden_layers"] = layers
    return model_cls, CONFIGS[family](**kw), source


# per token, max |logit error| / max |reference logit| of the median token (tests/test_quantised_models.py)
MEDIAN_BOUND = {"q8": 0.05, "q4": 0.25}


SLOW = pytest.mark.real_scale
CASES = [(f, "f16") if f == "olmoe" else pytest.param(f, "f16", marks=SLOW) for f in REAL] + \
    [pytest.param(f, q, marks=SLOW) for f, q in (("olmoe", "q8"), ("olmoe", "q4"), ("mixtral", "q4"))]


@pytest.mark.parametrize("family,dtype", CASES)
def test_real_dimensions_match_transformers(tmp_path, family, dtype):
    model_cls, config, source = config_of(family)
    ckpt = save_checkpoint(model_cls, config, tmp_path / "ckpt", dtype=torch.bfloat16)
    r = subprocess.run([sys.executable, "-c", CONVERT, str(ckpt), str(tmp_path / "pkg"), dtype], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    conv = json.loads(r.stdout)
    t0 = time.perf_counter()
    engine = Engine.load(tmp_path / "pkg", max_seq_len=256)
    load_s = time.perf_counter() - t0
    assert not engine.experts.paging
    ref = model_cls.from_pretrained(ckpt, dtype=torch.float32, experts_implementation="eager").eval()
    ids = np.random.default_rng(5).integers(3, 400, 12).tolist()
    ours, want = engine.logits(ids), reference_logits(ref, ids)
    if dtype == "f16":
        err = assert_logits_close(ours, want, "f16", ref, ids)
    else:                       # block formats: the median token within its bound, the worst reported
        per_token = np.abs(ours - want).max(-1) / float(np.abs(want).max())
        assert np.median(per_token) <= MEDIAN_BOUND[dtype], per_token
        err = float(np.median(per_token))
    del ref
    token, t0 = ids[-1], time.perf_counter()
    for i in range(4):
        [token] = engine.decode([(token, len(ids) + i, 0)], [GREEDY])
    decode = 4 / (time.perf_counter() - t0)
    pkg_bytes = sum(s["size"] for s in engine.package.manifest["shards"])
    figures = {"family": family, "dtype": dtype, "copies": source, "layers": config.num_hidden_layers,
               "package_gb": pkg_bytes / 1e9, "convert_s": conv["seconds"],
               "convert_gb_per_s": conv["bytes_read"] / 1e9 / conv["seconds"],
               "convert_peak_rss_gb": conv["peak_rss"] / 1e9, "load_s": load_s, "decode_tok_s": decode,
               "rel_logit_err": err, "splits": len(engine.package.manifest["plan"]["splits"]),
               "expert_pieces": engine.experts.pieces, "banks": len(engine.experts.banks)}
    print("\nREAL_SCALE " + json.dumps(figures))


# DeepSeek-V3 / Kimi K2 at full size: the KV cache per token and layer, expanded vs the latent
DEEPSEEK_V3 = dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
                   num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256,
                   num_experts_per_tok=8, n_group=8, topk_group=4, first_k_dense_replace=3, n_shared_experts=1,
                   kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                   routed_scaling_factor=2.5, max_position_embeddings=163840, model_type="deepseek_v3")


@pytest.mark.parametrize("family", REAL)
def test_full_size_plans_bind_at_most_128_mib(family):
    """The public checkpoint's dimensions from its config alone, with four layers: every kind of layer it
    has (DeepSeek-V3's three dense ones and a MoE one; the rest repeat them). No tensor part, expert slot
    or per-token buffer the plan binds exceeds 128 MiB."""
    _, config, _ = config_of(family, layers=None)
    full = {**config.to_dict(), "num_hidden_layers": 4}
    full.pop("layer_types", None)
    plan = plan_from_config(full, "f16")
    r = plan["resources"]
    assert r["largest_tensor"]["bytes"] <= 128 << 20 and r["experts"]["slot_bytes"] <= 128 << 20
    for name, res in r["buffers"].items():
        assert res.get("T", 0) * 64 <= 128 << 20, name


def test_mla_caches_the_latent():
    plan = plan_from_config(DEEPSEEK_V3, "f16")
    per_token = sum(b.get("S", 0) for b in plan["resources"]["buffers"].values())
    assert per_token == 61 * 4 * (512 + 64)          # the latent and the rotary key, f32, per layer
    expanded = 61 * 4 * 128 * ((128 + 64) + 128)     # per head keys and values, as before
    assert expanded / per_token > 70
