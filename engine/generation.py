"""What decoding a sequence needs besides the forward pass (engine/batch.py's decoder runs it): the
sampling settings, the seeded generator, stop conditions and incremental detokenisation with stop strings
held back until they are ruled out. web/generation.js is its twin, so a seed samples the same tokens
natively and in the browser."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from .errors import PromptError
from .tokenizer import StreamDecoder

_MASK64 = (1 << 64) - 1


class SplitMix64:
    """Uniform floats in [0, 1) from a 64-bit seed (Steele, Lea and Flood's SplitMix64, 53-bit mantissa).
    Chosen because it is a few lines in any language with 64-bit integers (BigInt in JS)."""

    def __init__(self, seed: int | None = None):
        self.state = (secrets.randbits(64) if seed is None else seed) & _MASK64

    def random(self) -> float:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return (z >> 11) * 2.0 ** -53


@dataclass
class Token:
    id: int
    text: str    # the new text this token completes (may be "" while a character or stop string is pending)
    logprob: float | None = None                       # with GenerationConfig.logprobs: log p(id)
    top_logprobs: list[tuple[int, float]] | None = None  # the most likely ids and their log p, best first


@dataclass(frozen=True)
class Sampling:
    """What the GPU sampler needs for one token (web/generation.js builds the same object)."""
    temperature: float = 0.0      # 0: greedy
    top_p: float = 1.0
    u: float = 0.0                # uniform in [0, 1): drives the draw
    mask: np.ndarray | None = None    # a grammar's token_mask row ([ceil(vocab / 32)] u32), or None


GREEDY = Sampling()


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | str | None = None
    logprobs: int | None = None       # None: none; k: each token's log-probability and the k most likely
    grammar: str | None = None        # the text must match it (engine/constraint.py: json_grammar(schema))

    def __post_init__(self):
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0):
            raise PromptError("max_new_tokens must be a non-negative integer")
        if not (0.0 <= float(self.temperature) <= 100.0):
            raise PromptError("temperature must lie in [0, 100]")
        if not (0.0 < float(self.top_p) <= 1.0):
            raise PromptError("top_p must lie in (0, 1]")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise PromptError("seed must be an integer")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        if not all(isinstance(s, str) for s in self.stop):
            raise PromptError("stop must be a string or a list of strings")
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20):
            raise PromptError("logprobs must be an integer in [0, 20]")
        if self.grammar is not None:
            from .constraint import check_grammar
            check_grammar(self.grammar)


def _pending_stop(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


def logprobs(logits: np.ndarray, token: int, k: int) -> dict:
    """The Token fields for log-probabilities: log_softmax of the logits (float64), the chosen token's
    and the k largest, best first (ties to the lower id)."""
    z = logits.astype(np.float64)
    z -= z.max()
    logp = z - np.log(np.exp(z).sum())
    top = np.argsort(-logp, kind="stable")[:k]
    return {"logprob": float(logp[token]), "top_logprobs": [(int(i), float(logp[i])) for i in top]}


class Decoding:
    """One sequence's new tokens as text: end-of-sequence, stop strings (held back until ruled out), the
    token budget, the grammar. push() takes each sampled token and returns its Token; `done` and
    `finish_reason` tell when the sequence ends ("stop": end-of-sequence token, stop string or a complete
    grammar; "length"). sampling(u) is what the GPU sampler needs for the next token. Generator and the
    batch decoder (engine/batch.py) share it, so a sequence reads the same alone or in a batch."""

    def __init__(self, tokenizer, config: GenerationConfig, budget: int):
        self.tokenizer, self.config, self.budget = tokenizer, config, budget
        self.decoder = StreamDecoder(tokenizer)
        self.constraint = None
        if config.grammar is not None:
            from .constraint import Constraint
            self.constraint = Constraint(tokenizer.grammar_tokens(), config.grammar)
        self.emitted = 0
        self.count = 0
        self.done = budget <= 0
        self.finish_reason: str | None = "length" if self.done else None

    def sampling(self, u: float) -> Sampling:
        """The sampler's inputs for the next token; the mask is the grammar's token_mask row or None."""
        mask = self.constraint.mask() if self.constraint else None
        return Sampling(float(self.config.temperature), float(self.config.top_p), u, mask)

    def push(self, token: int, probs: dict) -> Token:
        cfg = self.config
        self.count += 1
        if self.constraint:
            self.constraint.push(token)
        if token in self.tokenizer.eos_token_ids:
            self.done, self.finish_reason = True, "stop"
            return Token(token, self.decoder.text[self.emitted:], **probs)   # a pending stop prefix is text now
        self.decoder.push(token)
        text = self.decoder.text
        hits = [j for j in (text.find(s, max(0, self.emitted - len(s))) for s in cfg.stop) if j >= 0]
        if hits:
            self.done, self.finish_reason = True, "stop"
            return Token(token, text[self.emitted:min(hits)], **probs)
        complete = self.constraint is not None and self.constraint.done     # the grammar admits nothing more
        last = complete or self.count >= self.budget
        safe = len(text) if last else len(text) - _pending_stop(text, cfg.stop)
        out = Token(token, text[self.emitted:safe], **probs)
        self.emitted = max(self.emitted, safe)
        if last:
            self.done, self.finish_reason = True, "stop" if complete else "length"
        return out


def token_budget(config: GenerationConfig, max_seq_len: int, prompt_tokens: int) -> int:
    """New tokens a sequence may have: asked for, and what its KV cache rows leave room for."""
    return min(config.max_new_tokens, max_seq_len - prompt_tokens + 1)


def sample_step(config: GenerationConfig, sampling: Sampling, run) -> tuple[int, dict]:
    """run(sampling, return_logits) -> token or (token, logits), sampling as Decoding.sampling gives it:
    the token and its Token's log-probability fields when the config asks for them."""
    if config.logprobs is None:
        return run(sampling, False), {}
    token, logits = run(sampling, True)
    return token, logprobs(logits, token, config.logprobs)
