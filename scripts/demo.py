"""The main job until the trained demo model lands: make a tiny random-weight Mixtral checkpoint with
transformers, convert it, print `webmoe info` and stream a generation through the native engine.
Random weights write word salad; the point is the whole path running on this machine's WebGPU adapter."""
from __future__ import annotations

import sys
from pathlib import Path

from transformers import MixtralConfig, MixtralForCausalLM

from webmoe.cli import main as webmoe
from webmoe.tiny_models import save_checkpoint

OUT = Path(__file__).resolve().parent.parent / "out"


def make_package() -> Path:
    pkg = OUT / "demo-mixtral"
    if not (pkg / "manifest.json").is_file():
        config = MixtralConfig(vocab_size=400, hidden_size=96, intermediate_size=128, num_hidden_layers=4,
                               num_attention_heads=6, num_key_value_heads=2, num_local_experts=8,
                               num_experts_per_tok=2, max_position_embeddings=512, initializer_range=0.08,
                               bos_token_id=None, eos_token_id=None, pad_token_id=None)
        ckpt = save_checkpoint(MixtralForCausalLM, config, OUT / "demo-mixtral-hf")
        webmoe(["convert", str(ckpt), str(pkg), "--dtype", "f16", "--force"])
    return pkg


if __name__ == "__main__":
    pkg = make_package()
    webmoe(["info", str(pkg)])
    print("\n--- generating (random weights: expect word salad) ---", flush=True)
    sys.exit(webmoe(["run", str(pkg), "--prompt", "Beautiful is better than", "--max-new-tokens", "40",
                     "--temperature", "0.8", "--seed", "1"]))
