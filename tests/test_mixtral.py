"""Tiny Mixtral models built by transformers -> webmoe convert -> the native engine, against transformers."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralConfig, MixtralForCausalLM

from parity import (assert_greedy_matches, assert_incremental_equals_prefill, assert_logits_close, build,
                    reference_logits)
from webmoe.converter.convert import convert
from webmoe import Engine

rng = np.random.default_rng(1)


def mixtral(**kw):
    base = dict(vocab_size=400, hidden_size=48, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, num_local_experts=5, num_experts_per_tok=2, max_position_embeddings=256,
                initializer_range=0.1, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    base.update(kw)
    return MixtralConfig(**base)


CONFIGS = {
    "gqa-top2": mixtral(),
    "mha-top1": mixtral(num_key_value_heads=4, num_experts_per_tok=1, num_local_experts=4),
    "odd-sizes-top3": mixtral(hidden_size=35, head_dim=6, intermediate_size=27, num_attention_heads=5, num_key_value_heads=1,
                              num_local_experts=7, num_experts_per_tok=3, num_hidden_layers=3),
    "top4-of-9-wide-heads": mixtral(hidden_size=66, intermediate_size=50, num_attention_heads=3,
                                    num_key_value_heads=3, num_local_experts=9, num_experts_per_tok=4,
                                    rope_theta=500.0),
}


def prompt(n, vocab=400):
    return rng.integers(3, vocab, n).tolist()


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_logits_and_greedy_match_transformers(tmp_path, name, dtype):
    ref, engine = build(MixtralForCausalLM, CONFIGS[name], tmp_path, dtype)
    ids = prompt(70)   # more than one 64-token prefill chunk
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), dtype, ref, ids)
    assert_greedy_matches(ref, engine, prompt(9), 32, dtype)


def test_incremental_decode_equals_prefill(tmp_path):
    _, engine = build(MixtralForCausalLM, CONFIGS["gqa-top2"], tmp_path)
    assert_incremental_equals_prefill(engine, prompt(40), split=13)


def test_sliding_window_shorter_than_the_sequence(tmp_path):
    ref, engine = build(MixtralForCausalLM, mixtral(sliding_window=6), tmp_path)
    ids = prompt(20)
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), "f32")


def test_bf16_checkpoint(tmp_path):
    """A bf16 source converts exactly: compare with transformers on the same bf16 values in f32."""
    ref, engine = build(MixtralForCausalLM, CONFIGS["gqa-top2"], tmp_path, "f32", source_dtype=torch.bfloat16)
    ids = prompt(12)
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), "f32")


def test_fused_expert_tensors_and_sharded_checkpoint(tmp_path):
    """Fused 3-D expert tensors (gate_up_proj [E, 2I, H], down_proj [E, H, I]) split over several
    safetensors files with an index give the same package numerics as per-expert tensors."""
    cfg = CONFIGS["gqa-top2"]
    ref, engine = build(MixtralForCausalLM, cfg, tmp_path, "f32")
    src = tmp_path / "ckpt"
    sd = load_file(src / "model.safetensors")
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    E = cfg.num_local_experts
    first, second, index = {}, {}, {}
    for name, t in sd.items():
        if ".block_sparse_moe.experts." in name:
            continue
        first[name.replace("block_sparse_moe.gate", "mlp.gate")] = t
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}.block_sparse_moe.experts"
        second[f"model.layers.{l}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([sd[f"{p}.{e}.w1.weight"], sd[f"{p}.{e}.w3.weight"]]) for e in range(E)])
        second[f"model.layers.{l}.mlp.experts.down_proj"] = torch.stack([sd[f"{p}.{e}.w2.weight"] for e in range(E)])
    save_file(first, fused_dir / "model-00001-of-00002.safetensors")
    save_file(second, fused_dir / "model-00002-of-00002.safetensors")
    index = {n: "model-00001-of-00002.safetensors" for n in first}
    index.update({n: "model-00002-of-00002.safetensors" for n in second})
    (fused_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (fused_dir / f).write_bytes((src / f).read_bytes())
    convert(fused_dir, tmp_path / "pkg-fused", dtype="f32", progress=False)
    fused = Engine.load(tmp_path / "pkg-fused")
    ids = prompt(15)
    np.testing.assert_array_equal(fused.logits(ids), engine.logits(ids))


def test_chat_prompt_and_stop_strings(tmp_path):
    _, engine = build(MixtralForCausalLM, CONFIGS["gqa-top2"], tmp_path)
    messages = [{"role": "user", "content": "Beautiful is better than ugly."}]
    text = engine.tokenizer.render_chat(messages)
    assert text == "<|im_start|>user\nBeautiful is better than ugly.<|im_end|>\n<|im_start|>assistant\n"
    tokens = list(engine.generate(messages, max_new_tokens=12, temperature=0))
    assert len(tokens) == 12
    full = "".join(t.text for t in tokens)
    assert full == engine.tokenizer.decode([t.id for t in tokens])
    # a stop string taken from the middle of that output ends generation just before it
    cut = next((i for i in range(2, len(full) - 1) if full[i:i + 2].strip() and full.find(full[i:i + 2]) == i), None)
    if cut is not None:
        stopped = "".join(t.text for t in engine.generate(messages, max_new_tokens=12, temperature=0,
                                                          stop=[full[cut:cut + 2]]))
        assert stopped == full[:cut]


def test_sampling_is_seeded_and_respects_top_p(tmp_path):
    _, engine = build(MixtralForCausalLM, CONFIGS["gqa-top2"], tmp_path)
    ids = prompt(5)
    a = [t.id for t in engine.generate(ids, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)]
    b = [t.id for t in engine.generate(ids, max_new_tokens=10, temperature=1.0, top_p=0.9, seed=7)]
    assert a == b
    # top_p that keeps only the most likely token is greedy
    greedy = [t.id for t in engine.generate(ids, max_new_tokens=10, temperature=0)]
    tiny_p = [t.id for t in engine.generate(ids, max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=3)]
    assert tiny_p == greedy


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32},
], ids=["linear", "llama3"])
def test_rope_scalings_match_transformers(tmp_path, rope):
    """RoPE position interpolation (linear, as in Llama 2's long-context checkpoints) and Llama 3.1's
    per-frequency scaling: logits over positions past the original context, against transformers'."""
    ref, engine = build(MixtralForCausalLM, mixtral(rope_parameters=rope, max_position_embeddings=256), tmp_path)
    ids = prompt(70)
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), "f32")
