"""The decoder, for one sequence or many: several sequences share each forward pass, and a Generator
(Engine.generate) is a batch of one. Every sequence holds a slot of the engine's KV cache (rows
slot * max_seq_len ..); add() prefills a new one into a free slot and samples its first token, step()
decodes the next token of every active sequence in one pass — the router, the grouped
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
from .generation import Decoding, GenerationConfig, Sampling, SplitMix64, Token, logprobs, sample_step, token_budget


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
    failure: BaseException | None = None     # what ended it early, with finish_reason "error"

    @property
    def error(self) -> str | None:
        """Why it failed, in words for whoever sent it: a PromptError's own message (its prompt, settings or
        grammar), else a message that says nothing of the engine's state or of other sequences."""
        if self.failure is None:
            return None
        return str(self.failure) if isinstance(self.failure, PromptError) else "the engine failed on this sequence"

    @property
    def error_status(self) -> int | None:
        """400 when the sequence's own input was at fault (PromptError), 500 otherwise."""
        return None if self.failure is None else 400 if isinstance(self.failure, PromptError) else 500

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
            seq.pos, seq.last = len(ids), token
            seq.tokens.append(seq.decoding.push(token, probs))
        except BaseException:
            self._retire(seq)                      # its slot is free again, the batch never sees it
            raise
        if seq.done:
            self._retire(seq)
        return seq

    def step(self) -> list[tuple[Sequence, Token | None]]:
        """The next token of every active sequence, from one forward pass. A sequence that fails — its
        grammar cannot go on, its sampling or its row of the pass fails — leaves with finish_reason "error",
        `failure` set and token None; the others go on with the tokens they would get alone."""
        seqs, sampling, produced = [], [], []
        for s in list(self.active):
            try:
                sampling.append(s.decoding.sampling(float(s.rng.random())))
                seqs.append(s)
            except Exception as e:                 # noqa: BLE001 - this sequence's failure, reported as such
                produced.append(self._fail(s, e))
        if not seqs:
            return produced
        want = any(s.config.logprobs is not None for s in seqs)
        for s, result in zip(seqs, self._decode(seqs, sampling, want)):
            try:
                if isinstance(result, BaseException):
                    raise result
                token, logits = result if want else (result, None)
                probs = {} if s.config.logprobs is None else logprobs(logits, token, s.config.logprobs)
                s.pos += 1
                s.last = token
                tok = s.decoding.push(token, probs)
            except Exception as e:                 # noqa: BLE001 - as above
                produced.append(self._fail(s, e))
                continue
            s.tokens.append(tok)
            produced.append((s, tok))
            if s.done:
                self._retire(s)
        return produced

    def _decode(self, seqs: list[Sequence], sampling: list[Sampling], want: bool) -> list:
        """One pass for all rows; should it fail, each row alone (with the same sampling inputs, so the same
        tokens, and rewriting the same KV cache rows), so that only the rows at fault fail: a failed row's
        entry is its exception."""
        rows = [(s.last, s.pos, s.slot) for s in seqs]
        try:
            return self.engine.decode(rows, sampling, return_logits=want)
        except Exception as e:                     # noqa: BLE001 - found out row by row below
            if len(rows) == 1:
                return [e]
        out = []
        for row, samp in zip(rows, sampling):
            try:
                out.append(self.engine.decode([row], [samp], return_logits=want)[0])
            except Exception as e:                 # noqa: BLE001 - this row's failure
                out.append(e)
        return out

    def _fail(self, seq: Sequence, e: BaseException) -> tuple[Sequence, None]:
        seq.failure, seq.decoding.done, seq.decoding.finish_reason = e, True, "error"
        self._retire(seq)
        return seq, None

    def cancel(self, seq: Sequence) -> None:
        """Ends a sequence early (its client went away); its slot is free for the next."""
        if seq in self.active:
            seq.decoding.done, seq.decoding.finish_reason = True, seq.decoding.finish_reason or "cancelled"
            self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        self.active.remove(seq)
        self.free.append(seq.slot)


class Generator:
    """Engine.generate's result, a batch of one: iterate it for Tokens. Afterwards finish_reason is "stop"
    (end-of-sequence token, stop string or complete grammar) or "length", and prompt_tokens /
    completion_tokens count the tokens. A failure of the sequence is raised."""

    def __init__(self, engine, config: GenerationConfig, prompt_ids):
        self.engine, self.config, self.prompt_ids = engine, config, prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def __iter__(self):
        batch = BatchDecoder(self.engine)
        seq = batch.add(list(map(int, self.prompt_ids)), self.config)
        self.finish_reason = seq.finish_reason
        for token in list(seq.tokens):             # the first, sampled with the prefill
            yield self._counted(seq, token)
        while batch.active:
            [(_, token)] = batch.step()
            if token is None:
                raise seq.failure
            yield self._counted(seq, token)

    def _counted(self, seq: Sequence, token: Token) -> Token:
        self.completion_tokens += 1
        self.finish_reason = seq.finish_reason or "length"
        return token
