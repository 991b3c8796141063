"""Every MoE family beyond Mixtral (tests/test_mixtral.py): tiny transformers models with the family's
particular options switched on -> convert -> native logits and greedy tokens against transformers."""
import zlib

import numpy as np
import pytest
from transformers import (DeepseekV3Config, DeepseekV3ForCausalLM, GptOssConfig, GptOssForCausalLM, OlmoeConfig, OlmoeForCausalLM, PhimoeConfig, PhimoeForCausalLM, Qwen2MoeConfig,
                          Qwen2MoeForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM)

from webmoe.tools.summary import summarize
from parity import (assert_greedy_matches, assert_incremental_equals_prefill, assert_logits_close, build,
                    reference_logits)

COMMON = dict(vocab_size=400, max_position_embeddings=256, initializer_range=0.1, bos_token_id=None,
              eos_token_id=None, pad_token_id=None)


def qwen3(**kw):
    base = dict(hidden_size=48, intermediate_size=56, moe_intermediate_size=24, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=3,
                norm_topk_prob=True, **COMMON)
    return Qwen3MoeForCausalLM, Qwen3MoeConfig(**{**base, **kw})


def qwen2(**kw):
    base = dict(hidden_size=40, intermediate_size=52, moe_intermediate_size=20, shared_expert_intermediate_size=44,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=6,
                num_experts_per_tok=2, **COMMON)
    return Qwen2MoeForCausalLM, Qwen2MoeConfig(**{**base, **kw})


def olmoe(**kw):
    base = dict(hidden_size=36, intermediate_size=28, num_hidden_layers=2, num_attention_heads=3,
                num_key_value_heads=3, num_experts=10, num_experts_per_tok=4, **COMMON)
    return OlmoeForCausalLM, OlmoeConfig(**{**base, **kw})


def phimoe(**kw):
    base = dict(hidden_size=40, intermediate_size=36, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, num_local_experts=6, num_experts_per_tok=2, router_jitter_noise=0.3, **COMMON)
    return PhimoeForCausalLM, PhimoeConfig(**{**base, **kw})


def gpt_oss(**kw):
    # transformers' defaults: YaRN RoPE (factor 32), sliding and full attention alternating, sinks, biases
    base = dict(hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, num_local_experts=6, num_experts_per_tok=2, sliding_window=5,
                **COMMON)
    return GptOssForCausalLM, GptOssConfig(**{**base, **kw})


def deepseek_v3(**kw):
    base = dict(hidden_size=48, intermediate_size=56, moe_intermediate_size=20, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, num_experts_per_tok=3, n_group=4,
                topk_group=2, first_k_dense_replace=1, n_shared_experts=1, kv_lora_rank=24, q_lora_rank=20,
                qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10, routed_scaling_factor=2.5, **COMMON)
    return DeepseekV3ForCausalLM, DeepseekV3Config(**{**base, **kw})


CASES = {
    # many experts, top-k, renormalised, a dense layer among MoE layers (mlp_only_layers), QK-norm per head
    "qwen3_moe": qwen3(mlp_only_layers=[1]),
    # decoder_sparse_step 2: every second layer MoE; no renormalisation; GQA 4:1; odd sizes
    "qwen3_moe-sparse-step": qwen3(decoder_sparse_step=2, norm_topk_prob=False, num_hidden_layers=4,
                                   hidden_size=44, head_dim=10, num_key_value_heads=1, moe_intermediate_size=18),
    # shared expert with sigmoid gate, q/k/v biases, softmax top-2 without renormalisation
    "qwen2_moe": qwen2(),
    "qwen2_moe-dense-layer-normalised": qwen2(mlp_only_layers=[0], norm_topk_prob=True, num_experts_per_tok=3),
    # QK-norm over the whole projections, 10 experts top-4, no renormalisation
    "olmoe": olmoe(),
    "olmoe-gqa-normalised": olmoe(num_key_value_heads=1, norm_topk_prob=True, num_experts_per_tok=1),
    # sparsemixer routing with a wide threshold, LayerNorm with bias, attention and LM-head biases
    "phimoe": phimoe(attention_bias=True, lm_head_bias=True),
    # MLA with a low-rank query path, 16 experts in 4 groups (2 chosen), sigmoid + correction bias, scaling
    # 2.5, a shared expert, a first dense layer
    "deepseek_v3": deepseek_v3(),
    # query without low rank, YaRN with mscale (softmax scale and RoPE attention factor), 8 groups, two
    # shared experts, rotate-half RoPE
    "deepseek_v3-yarn-no-q-lora": deepseek_v3(
        q_lora_rank=None, n_group=8, topk_group=3, n_shared_experts=2, rope_interleave=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}),
    # sliding windows (5) shorter than the test sequence, sinks, clamped SwiGLU with biases, YaRN
    "gpt_oss": gpt_oss(),
    "gpt_oss-top3-mqa-tight-clamp": gpt_oss(num_experts_per_tok=3, num_key_value_heads=1, swiglu_limit=0.5,
                                            layer_types=["full_attention", "sliding_attention", "sliding_attention"]),
    # Phi-3.5-MoE's LongRoPE (short factors and short_mscale within the original context)
    "phimoe-longrope": phimoe(max_position_embeddings=1024, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 256,
        "short_factor": [1.0, 1.3, 1.9, 2.6, 4.0], "long_factor": [2.0, 3.0, 5.0, 8.0, 13.0],
        "short_mscale": 1.19, "long_mscale": 1.31}),
    "phimoe-narrow-threshold": phimoe(router_jitter_noise=0.01, hidden_size=50, num_attention_heads=5,
                                      num_key_value_heads=1, intermediate_size=31),
}

# what `webmoe info` must say of a family's particular options
INFO = {
    "qwen3_moe": {"layers": "3 (2 MoE; dense: 1)", "router": "softmax, renormalised"},
    "qwen2_moe": {"shared experts": "intermediate 44 (sigmoid-gated)", "router": "softmax, not renormalised"},
    "olmoe": {"experts": "10 per layer, top-4, intermediate 28"},
    "phimoe": {"router": "sparsemixer (threshold 0.3), not renormalised"},
    "deepseek_v3": {"layers": "3 (2 MoE; dense: 0)", "shared experts": "intermediate 20",
                    "router": "sigmoid + correction bias, best 2 of 4 groups, renormalised, scaled x2.5"},
    "gpt_oss": {"attention": "4 heads, 2 KV heads, sliding window 5, RoPE yarn"},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_family_matches_transformers(tmp_path, case, dtype):
    model_cls, config = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))   # the same prompts whatever runs first
    ref, engine = build(model_cls, config, tmp_path, dtype)
    assert engine.package.manifest["family"] == case.split("-")[0]
    info = summarize(engine.package)
    for key, value in INFO.get(case, {}).items():
        assert info[key] == value, (key, info[key])
    ids = rng.integers(3, 400, 70).tolist()
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), dtype, ref, ids)
    assert_greedy_matches(ref, engine, rng.integers(3, 400, 7).tolist(), 32, dtype)
    if dtype == "f32":
        assert_incremental_equals_prefill(engine, ids[:30], split=11)


@pytest.mark.parametrize("case", CASES)
def test_the_other_plan_variant_matches_transformers(tmp_path, gpu, case):
    """A package's plan runs with GPUs' geometry or with the "cpu" variant's (format/plan_variants.py); the
    test above runs the one of this adapter, this test the other, on the same adapter: same bounds."""
    other = "gpu" if gpu.adapter_class == "cpu" else "cpu"
    model_cls, config = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    ref, engine = build(model_cls, config, tmp_path, "f32", adapter_class=other)
    assert engine.adapter_class == other
    assert (engine.plan["steps"] == engine.package.manifest["plan"]["steps"]) == (other == "gpu")   # GPUs': the plan's own
    ids = rng.integers(3, 400, 70).tolist()
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), "f32", ref, ids)
    assert_greedy_matches(ref, engine, rng.integers(3, 400, 7).tolist(), 32, "f32")


def quantize_mxfp4(w: np.ndarray):
    """[..., rows, cols] float -> (blocks [..., rows, cols/32, 16] uint8, scales [..., rows, cols/32] uint8)."""
    from webmoe.converter.mxfp4 import E2M1
    *lead, rows, cols = w.shape
    v = w.reshape(*lead, rows, cols // 32, 32).astype(np.float64)
    amax = np.abs(v).max(-1, keepdims=True)
    exp = np.ceil(np.log2(np.maximum(amax, 1e-30) / 6.0))
    idx = np.abs(v / 2.0 ** exp)[..., None] - np.abs(E2M1[:8])       # nearest magnitude
    nib = np.abs(idx).argmin(-1) + 8 * (v < 0)
    blocks = (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(blocks), np.ascontiguousarray((exp[..., 0] + 127).astype(np.uint8))


def test_gpt_oss_mxfp4_experts(tmp_path):
    """Experts stored as MXFP4 blocks and scales, as the released GPT-OSS checkpoints store them; the
    reference is transformers with experts dequantised by transformers' own MXFP4 routine."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    from webmoe.converter.convert import convert
    from webmoe import Engine
    from tiny_models import save_checkpoint

    model_cls, config = gpt_oss()
    ckpt = save_checkpoint(model_cls, config, tmp_path / "ckpt")
    sd = load_file(ckpt / "model.safetensors")
    ref = model_cls.from_pretrained(ckpt, dtype=torch.float32, experts_implementation="eager").eval()
    for l in range(config.num_hidden_layers):
        p = f"model.layers.{l}.mlp.experts."
        for part in ("gate_up_proj", "down_proj"):
            out_major = sd.pop(p + part).transpose(1, 2).numpy()          # [E, out, in]
            blocks, scales = quantize_mxfp4(out_major)
            sd[p + part + "_blocks"], sd[p + part + "_scales"] = torch.from_numpy(blocks), torch.from_numpy(scales)
            deq = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
            getattr(ref.model.layers[l].mlp.experts, part).data.copy_(deq)
    save_file(sd, ckpt / "model.safetensors")
    convert(ckpt, tmp_path / "pkg", dtype="f32", progress=False)
    engine = Engine.load(tmp_path / "pkg")
    ids = np.random.default_rng(11).integers(3, 400, 40).tolist()
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), "f32")
