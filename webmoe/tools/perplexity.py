"""`webmoe perplexity`: how well a package predicts a text, the measure by which weight formats are
compared (benchmarks/bench_formats.py). The text is tokenised whole and cut into windows of `window` tokens;
each window is one forward pass from an empty cache, and every token after a window's first is scored.
perplexity = exp(mean negative log-likelihood over the scored tokens)."""
from __future__ import annotations

import math

import numpy as np

from webmoe.engine.engine import Engine


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def perplexity(engine: Engine, text: str, window: int = 256, max_tokens: int | None = None) -> dict:
    """-> {perplexity, tokens (scored), windows}."""
    if window < 2:
        raise ValueError("a perplexity window needs at least 2 tokens")
    ids = engine.tokenizer.encode(text)[:max_tokens]
    nll, scored, windows = 0.0, 0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window]
        if len(chunk) < 2:
            break
        lp = log_softmax(engine.logits(chunk))               # [n, V], a fresh sequence: row i predicts chunk[i + 1]
        nll -= float(lp[np.arange(len(chunk) - 1), chunk[1:]].sum())
        scored += len(chunk) - 1
        windows += 1
    if not scored:
        raise ValueError("the text is shorter than two tokens")
    return {"perplexity": math.exp(nll / scored), "tokens": scored, "windows": windows}
