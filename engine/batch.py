"""Batched decoding: several sequences share each forward pass. Every sequence holds a slot of the
engine's KV cache (rows slot * max_seq_len ..); add() prefills a new one into a free slot and samples its
first token, step() decodes the next token of every active sequence in one pass — the router, the grouped
expert kernels and the scatter-add already work on many tokens, so an expert chosen by several sequences
is read once. A sequence gets the tokens it would get alone (the same sampler and seeded random numbers
in the same order; logits within ~1e-6 of a single token's pass, since the matrix kernels add a tile of
tokens' products in another order, so only a near tie could choose differently); tests compare the tokens.

    batch = BatchDecoder(Engine.load(path, max_batch=8))
    a = batch.add("Hello", GenerationConfig(max_new_tokens=16, temperature=0))   # -> Sequence, a.tokens[0]
    while batch.active:
        for seq, token in batch.step(): ...
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PromptError
from .generation import Decoding, GenerationConfig, SplitMix64, Token, logprobs, sample_step, token_budget


@dataclass(eq=False)
class Sequence:
    slot: int
    config: GenerationConfig
    prompt_tokens: int
    decoding: Decoding
    rng: SplitMix64
    pos: int = 0                  # tokens in its KV cache rows
    last: int = 0                 # its newest token, not yet run through the model
    tokens: list[Token] = field(default_factory=list)
    error: str | None = None      # why it ended early, with finish_reason "error"

    @property
    def done(self) -> bool:
        return self.decoding.done

    @property
    def finish_reason(self) -> str | None:
        return self.decoding.finish_reason

    @property
    def completion_tokens(self) -> int:
        return self.decoding.count


class BatchDecoder:
    def __init__(self, engine):
        self.engine = engine
        self.active: list[Sequence] = []
        self.free = list(range(engine.max_batch - 1, -1, -1))

    @property
    def full(self) -> bool:
        return not self.free

    def add(self, prompt, config: GenerationConfig) -> Sequence:
        """Prefills a sequence (text, token ids or chat messages) into a free slot and samples its first
        token (seq.tokens[0]); a sequence done at once (one-token budget, end of sequence) frees its slot."""
        engine = self.engine
        if not self.free:
            raise PromptError(f"all {engine.max_batch} sequences of the batch are in use")
        ids = engine.prompt_ids(prompt)
        seq = Sequence(self.free.pop(), config, len(ids),
                       Decoding(engine.tokenizer, config, token_budget(config, engine.max_seq_len, len(ids))),
                       SplitMix64(config.seed))
        self.active.append(seq)
        if seq.done:                               # nothing to generate
            self._retire(seq)
            return seq
        try:
            token, probs = sample_step(config, seq.decoding.sampling(float(seq.rng.random())),
                                       lambda sampling, logits: engine.prefill(seq.slot, ids, 0, sampling, logits))
        except BaseException:
            self._retire(seq)                      # its slot is free again
            raise
        seq.pos, seq.last = len(ids), token
        seq.tokens.append(seq.decoding.push(token, probs))
        if seq.done:
            self._retire(seq)
        return seq

    def step(self) -> list[tuple[Sequence, Token | None]]:
        """The next token of every active sequence, from one forward pass. A sequence whose grammar cannot
        go on (llguidance's limits, say) leaves with finish_reason "error", its `error` set and token None;
        the others go on."""
        seqs, sampling, produced = [], [], []
        for s in list(self.active):
            try:
                sampling.append(s.decoding.sampling(float(s.rng.random())))
                seqs.append(s)
            except PromptError as e:
                s.error, s.decoding.done, s.decoding.finish_reason = str(e), True, "error"
                self._retire(s)
                produced.append((s, None))
        if not seqs:
            return produced
        rows = [(s.last, s.pos, s.slot) for s in seqs]
        want = any(s.config.logprobs is not None for s in seqs)
        out = self.engine.decode(rows, sampling, return_logits=want)
        for s, result in zip(seqs, out):
            token, logits = result if want else (result, None)
            probs = {} if s.config.logprobs is None else logprobs(logits, token, s.config.logprobs)
            s.pos += 1
            s.last = token
            tok = s.decoding.push(token, probs)
            s.tokens.append(tok)
            produced.append((s, tok))
            if s.done:
                self._retire(s)
        return produced

    def cancel(self, seq: Sequence) -> None:
        """Ends a sequence early (its client went away); its slot is free for the next."""
        if seq in self.active:
            seq.decoding.done, seq.decoding.finish_reason = True, seq.decoding.finish_reason or "cancelled"
            self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        self.active.remove(seq)
        self.free.append(seq.slot)
