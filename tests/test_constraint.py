"""Constrained decoding (engine/constraint.py, shaders/sample_mask.wgsl): with a JSON schema the demo
model's answer parses and validates with the `jsonschema` library — greedy and sampled, alone and in a
batch beside unconstrained sequences, which keep their own tokens; a budget too short ends with "length";
schemas llguidance cannot compile are clear errors."""
import json
from pathlib import Path

import jsonschema
import pytest

from webmoe import Engine
from webmoe.engine.batch import BatchDecoder
from webmoe.engine.constraint import json_grammar
from webmoe.engine.errors import PromptError
from webmoe.engine.generation import GenerationConfig

DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
ASK = [{"role": "user", "content": "Who is Romeo? Answer in JSON."}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "noble"],
          "properties": {"name": {"type": "string", "maxLength": 16},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}, "noble": {"type": "boolean"}}}
CAST = {"type": "array", "items": {"enum": ["Romeo", "Juliet", "Tybalt"]}, "minItems": 2, "maxItems": 3}
SETTINGS = [dict(temperature=0), dict(temperature=0.9, top_p=0.9, seed=7), dict(temperature=1.3, seed=1)]


@pytest.fixture(scope="module")
def engine():
    return Engine.load(DEMO)


def answer(engine, schema, **kw):
    g = engine.generate(ASK, max_new_tokens=120, grammar=json_grammar(schema), **kw)
    tokens = list(g)
    return "".join(t.text for t in tokens), g.finish_reason, [t.id for t in tokens]


@pytest.mark.parametrize("schema", [PERSON, CAST, None], ids=["object", "array", "json-mode"])
@pytest.mark.parametrize("kw", SETTINGS, ids=["greedy", "top-p", "hot"])
def test_the_answer_matches_the_schema(engine, schema, kw):
    text, finish, _ = answer(engine, schema, **kw)
    value = json.loads(text)
    jsonschema.validate(value, schema or {"type": "object"})
    assert finish == "stop"


def test_without_a_grammar_the_model_does_not_write_json(engine):
    """The schema is what makes the answer JSON: the same prompt unconstrained is not."""
    text = "".join(t.text for t in engine.generate(ASK, max_new_tokens=40, temperature=0))
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_constrained_and_free_sequences_share_a_batch(engine):
    """Each sequence of a batch gets the tokens it gets alone: the masks go to their own rows only."""
    jobs = [(ASK, dict(grammar=json_grammar(PERSON), temperature=0.9, top_p=0.9, seed=7)),
            ("ROMEO. But soft", dict(temperature=0)),
            (ASK, dict(grammar=json_grammar(CAST), temperature=0)),
            ("JULIET.", dict(temperature=1.0, seed=11))]
    want = []
    for prompt, kw in jobs:
        g = engine.generate(prompt, max_new_tokens=60, **kw)
        want.append(([t.id for t in g], g.finish_reason))
    batch = BatchDecoder(Engine.load(DEMO, max_batch=4))
    seqs = [batch.add(prompt, GenerationConfig(max_new_tokens=60, **kw)) for prompt, kw in jobs]
    while batch.active:
        batch.step()
    assert [([t.id for t in s.tokens], s.finish_reason) for s in seqs] == want
    jsonschema.validate(json.loads("".join(t.text for t in seqs[0].tokens)), PERSON)


def test_a_short_budget_ends_with_length(engine):
    g = engine.generate(ASK, max_new_tokens=4, grammar=json_grammar(PERSON), temperature=0)
    text = "".join(t.text for t in g)
    assert g.finish_reason == "length" and text.startswith('{"name')


@pytest.mark.parametrize("schema,message", [
    ({"type": "strin"}, "Invalid type: strin"),
    ({"enum": []}, "Unsatisfiable schema"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum \\(5\\) is greater than maximum \\(1\\)"),
    ({"type": "string", "pattern": "("}, "regex parse error"),
    ({"$ref": "#/nowhere"}, "does not exist"),
])
def test_schemas_that_cannot_work_are_clear_errors(schema, message):
    with pytest.raises(PromptError, match="the JSON schema cannot be used: .*" + message):
        json_grammar(schema)


def test_a_panic_in_llguidance_is_a_clear_error():
    """llguidance 1.9 panics (pyo3's PanicException, a BaseException) cutting this schema's error message
    inside a two-byte character (docs/upstream.md); a user gets a PromptError, the process goes on."""
    with pytest.raises(PromptError, match="the JSON schema cannot be used: "):
        json_grammar({"pattern": {"ab": "é" * 60}})


def test_a_grammar_must_compile(engine):
    with pytest.raises(PromptError, match="the grammar cannot be used"):
        engine.generate("x", grammar='{"grammars": [{"lark_grammar": "start: nope"}]}')
    with pytest.raises(PromptError, match="a grammar is a string"):
        engine.generate("x", grammar={"type": "object"})
