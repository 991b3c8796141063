"""Tiny random-initialised Hugging Face checkpoints built from configs alone (no download), with a small
byte-level BPE tokenizer trained here, saved as a checkpoint directory the converter reads.
For tests, the demo and benchmarks; needs the `test` extra (torch, transformers)."""
from __future__ import annotations

import codecs
import contextlib
import io
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

with contextlib.redirect_stdout(io.StringIO()):
    import this  # the Zen of Python: a few hundred words of English that ship with Python
ZEN = codecs.decode(this.s, "rot13")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([ZEN] * 4, trainer)
    return tok


def save_checkpoint(model_cls, config, out: Path, seed: int = 0, dtype=None) -> Path:
    """Builds model_cls(config) with seeded random weights and saves it with a tokenizer."""
    import torch
    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    model = model_cls(config).eval().to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    make_tokenizer(min(config.vocab_size, 400)).save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    return out
