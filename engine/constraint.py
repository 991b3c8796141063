"""Constrained decoding: a grammar (JSON mode, a JSON schema, or any llguidance grammar) decides which
tokens may come next, and its mask goes to the GPU sampler (shaders/sample_mask.wgsl), so every sampled
token continues a text the grammar accepts. llguidance (Microsoft's Rust library behind Guidance) computes
the masks from the package's own tokenizer.json on the CPU (tens of microseconds to a millisecond per
token, docs/benchmarks.md); the GPU's cost is one small pass per constrained row.

    grammar = json_grammar({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    engine.generate("Answer in JSON.", grammar=grammar)          # text that parses and matches the schema
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from functools import lru_cache

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from .errors import PromptError

# Compact JSON: no whitespace between tokens, so a model cannot stall in blanks (OpenAI's JSON mode
# warns of exactly that) and the text is what json.dumps(separators=(",", ":")) writes.
_JSON_DEFAULTS = {"whitespace_flexible": False}


def _brief(message: str) -> str:
    """llguidance's message without the parser state and grammar it appends (a client's error names what
    failed, not the parser's internals): its first line, at most 300 characters."""
    line = message.strip().split("\n", 1)[0]
    return line[:300] + ("..." if len(line) > 300 else "")


@contextmanager
def _llguidance(what: str):
    """llguidance's failures as PromptErrors saying `what` failed: its exceptions, and the Rust panics that
    pyo3 raises as PanicException, a BaseException that `except Exception` would let through (the fuzz
    test of the API found one: docs/upstream.md)."""
    try:
        yield
    except (PromptError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:       # noqa: BLE001 - see above
        raise PromptError(f"{what}: {_brief(str(e))}") from None


def json_grammar(schema: dict | None = None) -> str:
    """The grammar of JSON text matching `schema` (a JSON Schema); None: any JSON object (JSON mode).
    A schema llguidance cannot compile is a PromptError naming what is wrong."""
    if schema is None:
        schema = {"type": "object"}
    with _llguidance("the JSON schema cannot be used"):
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema, allow_nan=False),
                                                                defaults=_JSON_DEFAULTS)
    check_grammar(grammar, "the JSON schema")
    _check_satisfiable(grammar)
    return grammar


# A forced prefix this long means the grammar never lets the text branch or end: llguidance's parser stops
# such an endless prefix (a schema requiring itself) at its item limit, after 10,000 to 60,000 bytes.
MAX_FORCED_BYTES = 8192


def _check_satisfiable(grammar: str) -> None:
    """A PromptError when a JSON schema's grammar compiles but no text can satisfy it: nothing may begin it
    (`{"$ref": "#"}`), or every text must begin with an endless forced prefix (an object that requires
    itself: {"c": {"c": ...). Found with a byte-level vocabulary, so before any model is involved."""
    matcher = llguidance.LLMatcher(_byte_tokens(), grammar, log_level=0)
    bits = llg_numpy.allocate_token_bitmask(1, 257)
    with _llguidance("the JSON schema cannot be satisfied"):
        llg_numpy.fill_next_token_bitmask(matcher, bits, 0)
        forced = matcher.compute_ff_bytes()
    if matcher.is_error() or not bits.any():
        raise PromptError("the JSON schema cannot be satisfied: no JSON value matches it (does it refer to itself "
                          "with nothing else to choose?)")
    if len(forced) >= MAX_FORCED_BYTES:
        raise PromptError(f"the JSON schema cannot be satisfied: every answer would have to begin with more than "
                          f"{MAX_FORCED_BYTES} bytes of forced text ({forced[:32].decode('utf-8', 'replace')}...), "
                          "which means a required property or item refers to the schema itself without end")


@lru_cache(maxsize=1)
def _byte_tokens() -> llguidance.LLTokenizer:
    """A vocabulary of the 256 bytes and an end-of-sequence token: any text can be written in it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<eos>"])
    return llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=257, eos_token=256)


def check_grammar(grammar: str, what: str = "the grammar") -> None:
    """A PromptError with llguidance's message when the grammar does not compile."""
    if not isinstance(grammar, str):
        raise PromptError("a grammar is a string (see engine/constraint.py)")
    with _llguidance(f"{what} cannot be used"):
        error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise PromptError(f"{what} cannot be used: {_brief(error)}")


class GrammarTokens:
    """llguidance's view of one package's vocabulary: its tokenizer.json, the model's vocabulary size
    (ids the tokenizer lacks are never allowed) and the end-of-sequence token a finished text may take."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_id: int | None):
        with _llguidance("constrained decoding cannot read this model's tokenizer"):
            self.tok = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_id)
        self.vocab_size = vocab_size


class Constraint:
    """One sequence's grammar state: mask() is the row for sample_mask ([ceil(V / 32)] u32, bit set =
    allowed), push(token) advances it, `done` once the grammar admits nothing more (the text is complete)."""

    def __init__(self, tokens: GrammarTokens, grammar: str):
        with _llguidance("the grammar cannot be used"):
            self.matcher = llguidance.LLMatcher(tokens.tok, grammar, log_level=0)
        if self.matcher.is_error():
            raise PromptError(f"the grammar cannot be used: {_brief(self.matcher.get_error())}")
        self._bits = llg_numpy.allocate_token_bitmask(1, tokens.vocab_size)    # [1, words] int32

    def mask(self) -> np.ndarray:
        with _llguidance("the grammar failed"):
            llg_numpy.fill_next_token_bitmask(self.matcher, self._bits, 0)
        row = self._bits[0].view(np.uint32)
        if self.matcher.is_error() or not row.any():
            raise PromptError(f"the grammar allows no next token: {_brief(self.matcher.get_error() or 'no token fits')}")
        return row.copy()

    def push(self, token: int) -> None:
        with _llguidance("the grammar failed"):
            ok = self.matcher.consume_token(token)
        if not ok:
            raise PromptError(f"token {token} breaks the grammar: {_brief(self.matcher.get_error())}")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()
