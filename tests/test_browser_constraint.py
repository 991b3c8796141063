"""Structured outputs in the browser (web/constraint.js: XGrammar's WebAssembly build; its masks go through
shaders/sample_mask.wgsl as the native engine's do): the schemas and settings of tests/test_constraint.py
give JSON that parses and validates with the `jsonschema` library in Chromium and natively;
chat.completions.create takes OpenAI's response_format (json_object, json_schema) and refuses a malformed
one by schemas/chat_request.schema.json; a schema XGrammar cannot use is a PromptError naming what is wrong,
and the requests after it still work; a short budget ends with "length"; XGrammar is downloaded only when a
grammar is asked for."""
import json
from contextlib import contextmanager
from pathlib import Path

import jsonschema
import pytest

from browser import LOAD, browser, open_page, serving
from test_constraint import ASK, CAST, PERSON, SETTINGS
from webmoe import Engine
from webmoe.engine.constraint import json_grammar
from webmoe.serve.server import create_app

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
GRAMMAR_LIBRARY = "xgrammar.js"

# chat.completions.create for each request, in order; an error as {error: [name, code, message]}
CREATE_ALL = """async ([requests]) => {
  const out = [];
  for (const r of requests) {
    try {
      const c = await window.engine.chat.completions.create(r);
      out.push({text: c.choices[0].message.content, finish: c.choices[0].finish_reason});
    } catch (err) { out.push({error: [err.name, err.code, err.message]}); }
  }
  return out;
}"""


def response_format(schema):
    return ({"type": "json_object"} if schema is None else
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})


def chat_request(schema, max_tokens=120, **settings):
    return {"messages": ASK, "max_tokens": max_tokens, "temperature": settings.get("temperature", 0),
            "top_p": settings.get("top_p", 1), "seed": settings.get("seed"), "response_format": response_format(schema)}


@contextmanager
def demo_page():
    """The demo model loaded in a fresh page; `requests` lists every URL the page and its worker asked for."""
    requests = []
    with serving(create_app([DEMO])) as url, browser() as ctx:
        ctx.on("request", lambda r: requests.append(r.url))
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [f"/models/{DEMO.name}/manifest.json"])
        yield page, requests


@pytest.fixture(scope="module")
def site():
    with demo_page() as (page, requests):
        yield page, requests


def test_grammar_library_is_loaded_only_when_a_grammar_is_asked_for():
    with demo_page() as (page, requests):
        plain = page.evaluate(CREATE_ALL, [[{"messages": ASK, "max_tokens": 8, "temperature": 0}]])
        assert "error" not in plain[0]
        assert not [u for u in requests if u.endswith(GRAMMAR_LIBRARY)]
        page.evaluate(CREATE_ALL, [[chat_request(None, max_tokens=4), chat_request(CAST, max_tokens=4)]])
        assert len([u for u in requests if u.endswith(GRAMMAR_LIBRARY)]) == 1


SCHEMAS = [PERSON, CAST, None]
SCHEMA_IDS = ["object", "array", "json-mode"]


def test_the_answer_matches_the_schema_in_both_runtimes(site):
    """Each schema greedy, with top-p and hot, in Chromium and natively: JSON that validates, ended by the
    grammar ("stop"). The texts may differ: llguidance allows only the canonical tokens of text the grammar
    forces, XGrammar any tokens that spell it."""
    page, _ = site
    cases = [(schema, kw) for schema in SCHEMAS for kw in SETTINGS]
    got = page.evaluate(CREATE_ALL, [[chat_request(schema, **kw) for schema, kw in cases]])
    native = Engine.load(DEMO)
    for (schema, kw), answer in zip(cases, got):
        assert "error" not in answer, answer
        jsonschema.validate(json.loads(answer["text"]), schema or {"type": "object"})
        assert answer["finish"] == "stop"
        g = native.generate(ASK, max_new_tokens=120, grammar=json_grammar(schema), **kw)
        jsonschema.validate(json.loads("".join(t.text for t in g)), schema or {"type": "object"})
        assert g.finish_reason == "stop"


def test_without_a_grammar_the_answer_is_not_json(site):
    page, _ = site
    [answer] = page.evaluate(CREATE_ALL, [[{"messages": ASK, "max_tokens": 40, "temperature": 0}]])
    with pytest.raises(json.JSONDecodeError):
        json.loads(answer["text"])


def test_a_short_budget_ends_with_length(site):
    page, _ = site
    [answer] = page.evaluate(CREATE_ALL, [[chat_request(PERSON, max_tokens=4)]])
    assert answer["finish"] == "length" and answer["text"].startswith('{"name')


def test_generate_takes_a_response_format(site):
    """The page's generate() with responseFormat streams the tokens chat.completions joins."""
    page, _ = site
    streamed = page.evaluate("""async ([messages, format]) => {
      let text = '';
      for await (const t of window.engine.generate(messages, {maxNewTokens: 120, temperature: 0, responseFormat: format}))
        text += t.text;
      return text;
    }""", [ASK, response_format(CAST)])
    [answer] = page.evaluate(CREATE_ALL, [[chat_request(CAST)]])
    assert streamed == answer["text"]
    jsonschema.validate(json.loads(streamed), CAST)


@pytest.mark.parametrize("schema,message", [
    ({"type": "strin"}, 'Unsupported type "strin"'),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "missing"),
], ids=["unknown-type", "dangling-ref"])
def test_a_schema_xgrammar_cannot_use_is_a_prompt_error_and_the_next_request_works(site, schema, message):
    """XGrammar aborts the call that compiles such a schema; the error names what is wrong (from what it
    printed) and the library keeps working for the request after."""
    page, _ = site
    bad, good, again = page.evaluate(CREATE_ALL, [[chat_request(schema), chat_request(CAST), chat_request(CAST)]])
    name, code, text = bad["error"]
    assert (name, code) == ("PromptError", "prompt_error")
    assert text.startswith("the JSON schema cannot be used: ") and message in text, text
    jsonschema.validate(json.loads(good["text"]), CAST)
    assert good == again


@pytest.mark.parametrize("format,where", [
    ({"type": "xml"}, "type"),
    ({"type": "json_schema"}, "json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "has spaces", "schema": {}}}, "json_schema/name"),
    ({"type": "json_object", "json_schema": {"name": "x"}}, "json_schema"),
    ("json", "object"),
], ids=["unknown-type", "no-schema", "bad-name", "schema-without-its-type", "not-an-object"])
def test_a_malformed_response_format_is_refused_by_the_servers_schema(site, format, where):
    page, _ = site
    [answer] = page.evaluate(CREATE_ALL, [[{"messages": ASK, "response_format": format}]])
    name, code, text = answer["error"]
    assert (name, code) == ("PromptError", "prompt_error")
    assert text.startswith("response_format: ") and where in text, text
    server_schema = json.loads((ROOT / "schemas" / "chat_request.schema.json").read_text())["properties"]
    with pytest.raises(jsonschema.ValidationError):          # what the server refuses too
        jsonschema.validate(format, server_schema["response_format"])
