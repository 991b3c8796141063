"""Writes a checkpoint with the exact shapes of a public MoE model and random weights, every layer of it,
one safetensors shard per layer, never holding more than one layer in memory: torch's `meta` device
gives the names and shapes without allocating anything. Weights are scaled as a trained model's are
(normal, std 0.02; output projections 0.02 / sqrt(2 x layers); norms 1; biases and sinks 0), so that
activations stay finite through every layer and speed and memory are measured on a forward pass that
means something. GPT-OSS experts are MXFP4 blocks and E8M0 scales exactly as the public checkpoint
stores them (gate_up_proj_blocks [E, 2I, H/32, 16] uint8, *_scales [E, 2I, H/32]).

    .venv/bin/python scripts/full_size_checkpoint.py olmoe OUT_DIR [--layers N] [--seed S]
    .venv/bin/python scripts/full_size_checkpoint.py gpt_oss OUT_DIR

Needs the `test` extra (torch, transformers). OLMoE-1B-7B: 6.9 B parameters, 12.9 GiB in f16;
gpt-oss-20b: 21 B parameters, about 13 GiB (MXFP4 experts, bf16 elsewhere).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import transformers as tf
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))     # the tests' tiny-model helpers
from tiny_models import CHATML, make_tokenizer  # noqa: E402

# the public checkpoints' configs (the fields that shape the model), as their config.json state them
MODELS = {
    "olmoe": (tf.OlmoeConfig, tf.OlmoeForCausalLM, torch.float16, "OLMoE-1B-7B-0924", dict(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8, max_position_embeddings=4096,
        rope_theta=10000.0, rms_norm_eps=1e-5, clip_qkv=None, norm_topk_prob=False, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=50279, pad_token_id=1)),
    "gpt_oss": (tf.GptOssConfig, tf.GptOssForCausalLM, torch.bfloat16, "gpt-oss-20b", dict(
        vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
        max_position_embeddings=131072, rope_theta=150000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                      "original_max_position_embeddings": 4096, "truncate": False},
        bos_token_id=None, eos_token_id=200002, pad_token_id=199999)),
}
STD = 0.02
MXFP4_EXPONENT = 120          # E8M0 scale 2^-7: e2m1 codes uniform in [-6, 6] give weights of std ~0.02


def tensors_of(family: str, config) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every tensor of the checkpoint, in the model's order: name -> (shape, dtype)."""
    _, model_cls, dtype, _, _ = MODELS[family]
    with torch.device("meta"):
        model = model_cls(config)
    out = {}
    for name, t in model.state_dict().items():
        fused = re.search(r"experts\.(gate_up_proj|down_proj)$", name)
        if fused and family == "gpt_oss":             # [E, in, out] -> MXFP4, output-major
            E, rows_in, rows_out = t.shape
            out[name + "_blocks"] = ((E, rows_out, rows_in // 32, 16), torch.uint8)
            out[name + "_scales"] = ((E, rows_out, rows_in // 32), torch.uint8)
        elif fused:                                    # OLMoE's checkpoint: one [out, in] matrix per expert
            prefix = name[:fused.start()] + "experts."
            E, I, H = t.shape[0], config.intermediate_size, config.hidden_size
            for e in range(E):
                if fused.group(1) == "gate_up_proj":
                    out[f"{prefix}{e}.gate_proj.weight"] = ((I, H), dtype)
                    out[f"{prefix}{e}.up_proj.weight"] = ((I, H), dtype)
                else:
                    out[f"{prefix}{e}.down_proj.weight"] = ((H, I), dtype)
        else:
            out[name] = (tuple(t.shape), dtype)
    return out


def random_tensor(name: str, shape, dtype, layers: int, gen: torch.Generator) -> torch.Tensor:
    if name.endswith("_blocks"):
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    if name.endswith("_scales"):
        return torch.full(shape, MXFP4_EXPONENT, dtype=torch.uint8)
    if name.endswith(("norm.weight", "layernorm.weight")):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(("bias", "sinks")) or len(shape) < 2:
        return torch.zeros(shape, dtype=dtype)
    std = STD / math.sqrt(2 * layers) if re.search(r"(o_proj|down_proj|w2)", name) else STD
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * std).to(dtype)


def write_checkpoint(family: str, out: Path, layers: int | None = None, seed: int = 0) -> dict:
    """Writes the checkpoint (config.json, tokenizer, model-*.safetensors, the index); returns its figures."""
    config_cls, _, _, source, fields = MODELS[family]
    config = config_cls(**{**fields, **({"num_hidden_layers": layers} if layers else {})})
    config.architectures = [MODELS[family][1].__name__]
    L = config.num_hidden_layers
    spec = tensors_of(family, config)
    groups: dict[str, list[str]] = {}
    for name in spec:
        m = re.match(r"model\.layers\.(\d+)\.", name)
        groups.setdefault(f"layer{int(m.group(1)):03d}" if m else "other", []).append(name)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    weight_map, total_bytes, params, t0 = {}, 0, 0, time.perf_counter()
    files = sorted(groups)
    for i, group in enumerate(files):
        file = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        shard = {name: random_tensor(name, *spec[name], L, gen) for name in groups[group]}
        save_file(shard, out / file, metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = file
            total_bytes += t.numel() * t.element_size()
            params += t.numel() * (2 if t.dtype == torch.uint8 and name.endswith("_blocks") else 1)
        del shard
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=1))
    (out / "config.json").write_text(config.to_json_string())
    make_tokenizer(512).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return {"family": family, "copies": source, "layers": L, "parameters": params, "bytes": total_bytes,
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("family", choices=sorted(MODELS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the public model (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = write_checkpoint(a.family, a.out, a.layers, a.seed)
    print(f"{a.out}: {r['family']} ({r['copies']}'s shapes), {r['layers']} layers, {r['parameters'] / 1e9:.2f} B "
          f"parameters, {r['bytes'] / 2**30:.2f} GiB in {r['seconds']} s")


if __name__ == "__main__":
    main()
