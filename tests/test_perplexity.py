"""`webmoe perplexity` against transformers' own loss on the same checkpoint and windows."""
import math
import subprocess
import sys
from pathlib import Path

import torch
from transformers import MixtralForCausalLM

from parity import build
from test_mixtral import CONFIGS
from webmoe.tools.perplexity import perplexity

TEXT = "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune, or to take arms."


def test_perplexity_matches_transformers(tmp_path):
    ref, engine = build(MixtralForCausalLM, CONFIGS["gqa-top2"], tmp_path, "f32")
    ids = engine.tokenizer.encode(TEXT)
    window = 9
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor([ids[start:start + window]])
            if chunk.shape[1] < 2:
                break
            loss = ref(chunk, labels=chunk).loss.item()         # mean over the chunk's predicted tokens
            nll += loss * (chunk.shape[1] - 1)
            n += chunk.shape[1] - 1
    got = perplexity(engine, TEXT, window=window)
    assert got["tokens"] == n and got["windows"] == math.ceil((len(ids) - 1) / window)
    assert abs(got["perplexity"] - math.exp(nll / n)) <= 1e-3 * math.exp(nll / n)


def test_perplexity_command_refuses_a_text_it_cannot_score(tmp_path):
    (tmp_path / "one.txt").write_text("")
    demo = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
    r = subprocess.run([sys.executable, "-m", "webmoe", "perplexity", str(demo), "--text", str(tmp_path / "one.txt")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == f"webmoe: error: --text {tmp_path / 'one.txt'}: the text is shorter than two tokens"
