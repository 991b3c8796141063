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

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from .errors import PromptError

# Compact JSON: no whitespace between tokens, so a model cannot stall in blanks (OpenAI's JSON mode
# warns of exactly that) and the text is what json.dumps(separators=(",", ":")) writes.
_JSON_DEFAULTS = {"whitespace_flexible": False}


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
        message = str(e)
        raise PromptError(f"{what}: {message[:300]}{'...' if len(message) > 300 else ''}") from None


def json_grammar(schema: dict | None = None) -> str:
    """The grammar of JSON text matching `schema` (a JSON Schema); None: any JSON object (JSON mode).
    A schema llguidance cannot compile is a PromptError naming what is wrong."""
    if schema is None:
        schema = {"type": "object"}
    with _llguidance("the JSON schema cannot be used"):
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema, allow_nan=False),
                                                                defaults=_JSON_DEFAULTS)
    check_grammar(grammar, "the JSON schema")
    return grammar


def check_grammar(grammar: str, what: str = "the grammar") -> None:
    """A PromptError with llguidance's message when the grammar does not compile."""
    if not isinstance(grammar, str):
        raise PromptError("a grammar is a string (see engine/constraint.py)")
    with _llguidance(f"{what} cannot be used"):
        error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise PromptError(f"{what} cannot be used: {error}")


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
            raise PromptError(f"the grammar cannot be used: {self.matcher.get_error()}")
        self._bits = llg_numpy.allocate_token_bitmask(1, tokens.vocab_size)    # [1, words] int32

    def mask(self) -> np.ndarray:
        with _llguidance("the grammar failed"):
            llg_numpy.fill_next_token_bitmask(self.matcher, self._bits, 0)
        row = self._bits[0].view(np.uint32)
        if self.matcher.is_error() or not row.any():
            raise PromptError(f"the grammar allows no next token: {self.matcher.get_error() or 'no token fits'}")
        return row.copy()

    def push(self, token: int) -> None:
        with _llguidance("the grammar failed"):
            ok = self.matcher.consume_token(token)
        if not ok:
            raise PromptError(f"token {token} breaks the grammar: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()
