"""Builds a synthetic MoE larger than the demo model, for `webmoe bench`: Qwen3-MoE architecture with
random weights (no training), 8 layers x 64 experts, top-8, about 100 MB of f16 experts.

    .venv/bin/python scripts/synthetic_model.py [OUT_DIR]       # default out/synthetic-qwen3-moe
    .venv/bin/webmoe bench out/synthetic-qwen3-moe --png out/bench-synthetic.png
"""
from __future__ import annotations

import sys
from pathlib import Path

from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from webmoe.converter.convert import convert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))            # the tests' tiny-model helpers
from tiny_models import save_checkpoint  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "out" / "synthetic-qwen3-moe"
    config = Qwen3MoeConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                            num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                            num_experts=64, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=2048,
                            initializer_range=0.05, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    ckpt = save_checkpoint(Qwen3MoeForCausalLM, config, out.parent / (out.name + "-hf"), seed=7)
    convert(ckpt, out, dtype="f16", force=True)
    print(f"wrote {out}")
