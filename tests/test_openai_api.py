"""The OpenAI-compatible API of `webmoe serve`, on the native engine."""
import http.client
import json

import pytest
from transformers import MixtralForCausalLM

from browser import serving
from test_mixtral import CONFIGS
from webmoe.converter.convert import convert
from webmoe import Engine
from webmoe.serve.server import create_app
from tiny_models import save_checkpoint

MESSAGES = [{"role": "user", "content": "Beautiful is better than ugly."}]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    pkg = convert(save_checkpoint(MixtralForCausalLM, CONFIGS["gqa-top2"], root / "ckpt"), root / "tiny",
                  dtype="f32", progress=False)
    with serving(create_app([pkg])) as url:
        yield url, pkg


def post(url, body, raw=None):
    c = http.client.HTTPConnection(url.split("//")[1], timeout=120)
    c.request("POST", "/v1/chat/completions", body=raw if raw is not None else json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, r.getheader("Content-Type"), r.read().decode()


def test_models_and_completion_match_the_engine(api):
    url, pkg = api
    c = http.client.HTTPConnection(url.split("//")[1], timeout=30)
    c.request("GET", "/v1/models")
    assert [m["id"] for m in json.loads(c.getresponse().read())["data"]] == ["tiny"]
    expected = "".join(t.text for t in Engine.load(pkg).generate(MESSAGES, max_new_tokens=9, temperature=0))
    status, _, body = post(url, {"model": "tiny", "messages": MESSAGES, "max_tokens": 9, "temperature": 0})
    assert status == 200, body
    r = json.loads(body)
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["content"] == expected
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 9 and r["usage"]["prompt_tokens"] > 5

    status, ctype, body = post(url, {"model": "tiny", "messages": MESSAGES, "max_tokens": 9, "temperature": 0,
                                     "stream": True})
    assert status == 200 and ctype.startswith("text/event-stream")
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body,raw,status,message", [
    (None, "{not json", 400, "not valid JSON"),
    ([1, 2], None, 400, "is not of type 'object'"),
    ({"model": "tiny"}, None, 400, "'messages'"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, None, 400, "messages/0/content"),
    ({"model": "nope", "messages": MESSAGES}, None, 404, "unknown model 'nope'"),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": "many"}, None, 400, "max_tokens: 'many' is not of type 'integer'"),
    ({"model": "tiny", "messages": MESSAGES, "temperature": -1}, None, 400, "temperature"),
])
def test_bad_requests_get_clear_errors(api, body, raw, status, message):
    url, _ = api
    got, _, text = post(url, body, raw)
    assert got == status, text
    assert message in json.loads(text)["error"]["message"]


def test_an_oversized_max_tokens_is_clipped_to_the_context(api):
    """max_tokens far past the model's context (256 positions) is no error: the answer is the engine's own
    with the budget its KV cache leaves, ending with "length" where the context ends."""
    url, pkg = api
    got, _, text = post(url, {"model": "tiny", "messages": MESSAGES, "max_tokens": 100000, "temperature": 0})
    assert got == 200, text
    r = json.loads(text)
    g = Engine.load(pkg).generate(MESSAGES, max_new_tokens=100000, temperature=0)
    want = "".join(t.text for t in g)
    assert r["choices"][0]["message"]["content"] == want
    assert r["choices"][0]["finish_reason"] == g.finish_reason
    assert r["usage"]["completion_tokens"] == g.completion_tokens <= 256 - g.prompt_tokens + 1
    if g.finish_reason == "length":
        assert g.completion_tokens == 256 - g.prompt_tokens + 1
