"""`webmoe serve`'s /v1 API as the official `openai` client uses it: chat and text completions (streamed
with usage, n, logprobs, seed, content parts), structured outputs (JSON schema, JSON mode), models, errors in OpenAI's shape, API keys, CORS, the queue
bound and disconnects."""
import http.client
import json
import socket
import time

from typing import Literal

import jsonschema
import numpy as np
import openai
import pydantic
import pytest
from transformers import MixtralForCausalLM

from api_client import answer_text
from browser import serving
from test_mixtral import mixtral
from webmoe import Engine
from webmoe.converter.convert import convert
from webmoe.engine.constraint import json_grammar
from webmoe.serve.server import create_app
from tiny_models import save_checkpoint

KEY = "sk-test-key"
ORIGIN = "http://allowed.example"
MESSAGES = [{"role": "user", "content": "Beautiful is better than ugly."}]


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    root = tmp_path_factory.mktemp("client")
    config = mixtral(max_position_embeddings=4096)       # room for a generation long enough to be interrupted
    return convert(save_checkpoint(MixtralForCausalLM, config, root / "ckpt"), root / "tiny", dtype="f32",
                   progress=False)


@pytest.fixture(scope="module")
def engine(pkg):
    return Engine.load(pkg)


@pytest.fixture(scope="module")
def site(pkg):
    app = create_app([pkg], api_keys=(KEY,), cors_origins=(ORIGIN,), admission={"max_waiting": 1, "max_wait_s": 60})
    with serving(app) as url:
        yield url


def client(url, key=KEY):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def text_of(engine, prompt, **kw):
    return "".join(t.text for t in engine.generate(prompt, **kw))


def test_chat_completions(site, engine):
    c = client(site)
    assert [m.id for m in c.models.list()] == ["tiny"] and c.models.retrieve("tiny").owned_by == "webmoe"
    with pytest.raises(openai.NotFoundError, match="unknown model 'nope'"):
        c.models.retrieve("nope")
    want = text_of(engine, MESSAGES, max_new_tokens=8, temperature=0)
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.total_tokens == r.usage.prompt_tokens + 8

    # streamed, with the usage as the last chunk
    chunks = list(c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"

    # content given as text parts is the same prompt
    parts = [{"role": "user", "content": [{"type": "text", "text": "Beautiful is better "},
                                          {"type": "text", "text": "than ugly."}]}]
    assert c.chat.completions.create(model="tiny", messages=parts, max_tokens=8,
                                     temperature=0).choices[0].message.content == want

    # n choices, choice i sampled with seed + i: each is the engine's own sampling with that seed
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0.9, seed=7, n=2)
    assert [ch.message.content for ch in r.choices] == [
        text_of(engine, MESSAGES, max_new_tokens=6, temperature=0.9, seed=7 + i) for i in range(2)]
    assert r.usage.completion_tokens == 12


def test_logprobs_are_the_models(site, engine):
    """Greedy tokens with logprobs: each token's log-probability is numpy's log-softmax of the engine's
    logits at that step, it is the best of its top_logprobs, and the alternatives come in order."""
    r = client(site).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0,
                                             logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    ids = engine.tokenizer.prompt_ids(MESSAGES)
    generated = [t.id for t in engine.generate(MESSAGES, max_new_tokens=5, temperature=0)]
    logits = engine.logits(ids + generated[:-1])[len(ids) - 1:].astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert len(content) == 5
    for step, entry in enumerate(content):
        assert entry.logprob == pytest.approx(logp[step, generated[step]], abs=1e-4)
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(entry.logprob)
        assert tops == pytest.approx(sorted(logp[step], reverse=True)[:3], abs=1e-4)


def test_text_completions(site, engine):
    c = client(site)
    want = text_of(engine, "Hello there", max_new_tokens=6, temperature=0)
    r = c.completions.create(model="tiny", prompt="Hello there", max_tokens=6, temperature=0, logprobs=2)
    assert r.object == "text_completion" and r.choices[0].text == want
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    r = c.completions.create(model="tiny", prompt=["Hello there", "Good day"], max_tokens=4, temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.choices[1].text == text_of(engine, "Good day", max_new_tokens=4, temperature=0)
    streamed = list(c.completions.create(model="tiny", prompt="Hello there", max_tokens=6, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in streamed) == want


class Verdict(pydantic.BaseModel):
    hero: Literal["Romeo", "Juliet"]
    act: int = pydantic.Field(ge=1, le=5)
    tragic: bool


VERDICT = {"type": "object", "additionalProperties": False, "required": ["hero", "act"],
           "properties": {"hero": {"enum": ["Romeo", "Juliet"]}, "act": {"type": "integer", "minimum": 1, "maximum": 5}}}


def test_structured_outputs(site, engine):
    """response_format as clients send it: the openai client's parse() with a pydantic model, a JSON schema
    (streamed and whole, the engine's own constrained answer) and JSON mode."""
    c = client(site)
    r = c.chat.completions.parse(model="tiny", messages=MESSAGES, response_format=Verdict, max_tokens=60,
                                 temperature=0.9, seed=3)
    assert isinstance(r.choices[0].message.parsed, Verdict) and r.choices[0].finish_reason == "stop"

    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True}}
    want = text_of(engine, MESSAGES, max_new_tokens=60, temperature=0, grammar=json_grammar(VERDICT))
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, temperature=0, response_format=fmt)
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(want), VERDICT)
    streamed = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, temperature=0,
                                         response_format=fmt, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == want

    # JSON mode: any JSON object, the engine's own sampled answer for that seed, ended by the grammar
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=60, temperature=1.0, seed=5,
                                  response_format={"type": "json_object"})
    want = text_of(engine, MESSAGES, max_new_tokens=60, temperature=1.0, seed=5, grammar=json_grammar(None))
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(want), dict)


@pytest.mark.parametrize("kw,message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format: the JSON schema cannot be used: Invalid type: strin"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "'tools' was unexpected"),
    ({"presence_penalty": 1.0}, "presence_penalty is not supported"),
    ({"n": 9}, "n: 9 is greater than the maximum of 8"),
])
def test_what_is_not_supported_is_a_400_naming_it(site, kw, message):
    with pytest.raises(openai.BadRequestError, match=message) as e:
        client(site).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, **kw)
    assert e.value.body["type"] == "invalid_request_error"


def raw(url, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(url.split("//")[1], timeout=120)
    c.request(method, path, body=None if body is None else json.dumps(body),
              headers={"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read().decode()


def test_keys_cors_and_errors_in_openais_shape(site):
    with pytest.raises(openai.AuthenticationError, match="a valid API key is needed"):
        client(site, key="wrong").models.list()
    status, _, body = raw(site, "GET", "/v1/models")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    auth = {"Authorization": f"Bearer {KEY}"}
    for path, method, want in (("/v1/nope", "GET", 404), ("/v1/chat/completions", "GET", 405)):
        status, _, body = raw(site, method, path, headers=auth)
        assert status == want and json.loads(body)["error"]["message"], body
    status, headers, _ = raw(site, "OPTIONS", "/v1/chat/completions", headers={"Origin": ORIGIN})
    assert status == 204 and "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = raw(site, "GET", "/v1/models", headers={**auth, "Origin": ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, body = raw(site, "OPTIONS", "/v1/models", headers={"Origin": "http://other.example"})
    assert status == 403 and "Access-Control-Allow-Origin" not in headers and json.loads(body)["error"]
    assert raw(site, "GET", "/health")[0] == 200                  # liveness and readiness need no key
    status, _, body = raw(site, "GET", "/ready")
    assert status == 200 and json.loads(body)["status"] == "ready"


def open_stream(url, max_tokens):
    """Starts a streamed chat completion on a raw socket and reads until its first token: the model is busy."""
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    body = json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
                       "stream": True})
    s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    seen = b""
    while seen.count(b"data: ") < 2:
        seen += s.recv(4096)
    return s


def stats(url):
    return json.loads(raw(url, "GET", "/stats", headers={"Authorization": f"Bearer {KEY}"})[2])["tiny"]


def test_queue_bound_and_disconnects(pkg):
    """One generation runs, one request may wait (max_waiting 1): a third gets 429 with Retry-After at once.
    Closing the running stream stops its generation (far short of its 4,000 tokens) and the waiting request
    runs. A non-streaming client that goes away stops its generation too; with a wait limit, a request
    that waits too long gets 503 with Retry-After."""
    import threading
    app = create_app([pkg], api_keys=(KEY,), admission={"max_waiting": 1, "max_wait_s": 60},
                     max_batch=1)
    with serving(app) as url:
        running = open_stream(url, 4000)
        waiting = {}
        t = threading.Thread(target=lambda: waiting.update(r=client(url).chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=3, temperature=0)))
        t.start()
        while stats(url)["waiting"] < 1:
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError, match="busy") as e:
            client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
        assert int(e.value.response.headers["Retry-After"]) >= 1
        running.close()
        t.join(120)
        assert waiting["r"].usage.completion_tokens == 3
        s = stats(url)
        assert s["cancelled"] == 1 and s["rejected"] == 1 and s["completed"] == 1
        assert s["completion_tokens"] < 4000 + 3
        time.sleep(0.5)                          # the cancelled generation has stopped: nothing runs, no token
        assert stats(url)["running"] == 0 and stats(url)["completion_tokens"] == s["completion_tokens"]

        # a non-streaming client that goes away
        host, port = url.split("//")[1].split(":")
        sock = socket.create_connection((host, int(port)))
        body = json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": 4000, "temperature": 0})
        sock.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        while stats(url)["running"] < 1:
            time.sleep(0.05)
        time.sleep(0.5)                          # it generates ...
        sock.close()                             # ... and its client leaves
        while stats(url)["cancelled"] < 2:
            time.sleep(0.05)
        assert stats(url)["completion_tokens"] < s["completion_tokens"] + 4000

    app = create_app([pkg], api_keys=(KEY,), admission={"max_waiting": 4, "max_wait_s": 0.5}, max_batch=1)
    with serving(app) as url:
        running = open_stream(url, 4000)
        with pytest.raises(openai.InternalServerError, match="stayed busy for 0.5 s") as e:
            client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
        assert e.value.status_code == 503 and int(e.value.response.headers["Retry-After"]) >= 1
        running.close()


def test_a_job_whose_server_stopped_is_cancelled_not_raised(engine):
    """The worker's thread sends a request's tokens through the server's event loop; when the server stopped
    while the sequence ran, that loop is closed: the job is cancelled (the worker drops its sequences at
    the next pass) instead of raising "Event loop is closed" from the worker's thread for every later
    token, as it did (seen at the end of test_queue_bound_and_disconnects, now and then)."""
    import asyncio
    import threading
    from webmoe.serve.api_requests import parse_chat
    from webmoe.serve.openai_api import Job
    req = parse_chat(json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": 4}).encode())

    async def started():
        return Job(engine, None, req)
    jobs = []                                     # a thread of its own: the test process may run a loop here
    thread = threading.Thread(target=lambda: jobs.append(asyncio.run(started())))
    thread.start()
    thread.join(30)
    [job] = jobs                                  # its loop is closed once run() returns
    job.put("token", 0, None)
    assert job.cancelled.is_set()


ADMIN = "admin-key"


def test_hot_swap_under_load_drops_nothing(pkg, tmp_path):
    """While 8 clients send requests, the model is pointed at a new version (other weights): every
    request succeeds, each answer is one version's or the other's, both versions answer, and afterwards
    the model names the new digest. The swap needs the admin key; a path that is not a package is a 400."""
    import threading
    v2 = convert(save_checkpoint(MixtralForCausalLM, mixtral(max_position_embeddings=4096), tmp_path / "ckpt2",
                                 seed=99), tmp_path / "v2" / "tiny", dtype="f32", progress=False)
    want = {text_of(Engine.load(p), MESSAGES, max_new_tokens=5, temperature=0): p for p in (pkg, v2)}
    assert len(want) == 2
    app = create_app([pkg], api_keys=(KEY,), admin_keys=(ADMIN,), admission={"max_waiting": 64, "max_wait_s": 120},
                     package_roots=[tmp_path])
    with serving(app) as url:
        answers, errors = [], []
        swapped = threading.Event()

        def user():        # requests until two of its own started after the swap
            after = 0
            while after < 2:
                after += swapped.is_set()
                try:
                    r = client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5,
                                                            temperature=0)
                    answers.append(r.choices[0].message.content)
                except Exception as e:          # noqa: BLE001 - any failure counts
                    errors.append(e)
        users = [threading.Thread(target=user) for _ in range(8)]
        for t in users:
            t.start()
        while len(answers) < 4:
            time.sleep(0.02)
        assert raw(url, "PUT", "/admin/models/tiny", {"path": str(v2)}, {"Authorization": f"Bearer {KEY}"})[0] == 401
        assert raw(url, "PUT", "/admin/models/tiny", {"path": str(tmp_path)},
                   {"Authorization": f"Bearer {ADMIN}"})[0] == 400
        status, _, body = raw(url, "PUT", "/admin/models/tiny", {"path": str(v2)}, {"Authorization": f"Bearer {ADMIN}"})
        assert status == 200, body
        swapped.set()
        for t in users:
            t.join(300)
        assert errors == [] and len(answers) >= 8 * 2 + 4
        assert {want[a] for a in answers} == {pkg, v2}
        assert answers[-1] in want and want[answers[-1]] == v2
        digest = json.loads((v2 / "manifest.json").read_text())["manifest_sha256"]
        assert client(url).models.retrieve("tiny").model_extra["digest"] == digest
        assert stats(url)["completed"] == len(answers) and stats(url)["failed"] == 0


def test_memory_budget_unloads_idle_engines(pkg, tmp_path):
    other = convert(save_checkpoint(MixtralForCausalLM, mixtral(), tmp_path / "ckpt"), tmp_path / "other",
                    dtype="f32", progress=False)
    size = sum(s["size"] for s in json.loads((pkg / "manifest.json").read_text())["shards"])
    with serving(create_app([pkg, other], memory_budget=int(size * 1.5))) as url:
        c = client(url)
        for name in ("tiny", "other", "tiny"):
            c.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2, temperature=0)
            ready = json.loads(raw(url, "GET", "/ready")[2])["models"]
            assert ready[name] == "loaded" and list(ready.values()).count("loaded") == 1, ready


def test_ab_split_feedback_and_rollback(pkg, tmp_path):
    """A route splitting 0.75 / 0.25 between two models: over 200 requests the observed share of the
    second arm is within 4 standard deviations of 0.25, a named user always lands in the same arm, feedback
    reaches the arm that answered, and GET /routes reports both arms with tests against the control. Then a
    fault injected into the second arm's engine (every generation raises) rolls the route back to the control
    once the arm has its minimum of requests; later requests all go to the control."""
    from webmoe.serve.routes import Route
    from webmoe.serve.server import REGISTRY
    other = convert(save_checkpoint(MixtralForCausalLM, mixtral(), tmp_path / "ckpt"), tmp_path / "other",
                    dtype="f32", progress=False)
    route = Route("chat", [("tiny", 0.75), ("other", 0.25)], error_rate=0.5, min_requests=5, window=10)
    app = create_app([pkg, other], routes=[route])
    with serving(app) as url:
        c = client(url)
        assert {"chat", "tiny", "other"} <= {m.id for m in c.models.list()}
        served = [c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1, temperature=0)
                  for _ in range(200)]
        share = sum(r.model == "other" for r in served) / 200
        assert abs(share - 0.25) <= 4 * (0.25 * 0.75 / 200) ** 0.5, share
        assert len({c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1, user="ada").model
                    for _ in range(10)}) == 1
        for r in served[:20]:
            status, _, _ = raw(url, "POST", "/v1/feedback", {"id": r.id, "positive": r.model == "tiny"})
            assert status == 200
        assert raw(url, "POST", "/v1/feedback", {"id": "chatcmpl-unknown", "positive": True})[0] == 404
        report = json.loads(raw(url, "GET", "/routes")[2])["chat"]
        control, arm = report["arms"]
        assert control["requests"] + arm["requests"] == 210 and arm["errors"] == 0
        assert control["feedback"]["negative"] == 0 and arm["feedback"]["positive"] == 0
        assert sum(r.model == "other" for r in served[:20]) == arm["feedback"]["negative"]
        assert 0 <= arm["vs_control_p"]["latency"] <= 1 and arm["vs_control_p"]["error_rate"] == 1.0

        def broken(*args, **kwargs):
            raise RuntimeError("injected fault")
        engine = app[REGISTRY].versions["other"].engine
        engine.prefill = engine.decode = broken
        failures = 0
        for _ in range(200):
            try:
                c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1, temperature=0)
            except openai.InternalServerError as e:        # the fault's text stays on the server's console
                assert "the server failed to start this answer" in str(e) and "injected" not in str(e)
                failures += 1
            if route.events:
                break
        report = json.loads(raw(url, "GET", "/routes")[2])["chat"]
        assert [e["rolled_back"] for e in report["events"]] == ["other"] and "error rate" in report["events"][0]["why"]
        assert failures >= 1 and [a["weight"] for a in report["arms"]] == [1.0, 0.0]
        assert all(c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1).model == "tiny"
                   for _ in range(20))


def test_stop_strings_and_max_completion_tokens_end_to_end(site, engine):
    """`stop` and `max_completion_tokens` through the official client, whole and streamed, chat and text:
    the engine's own answer with the same stop strings and budget, its finish reason and token count."""
    c = client(site)
    free = text_of(engine, MESSAGES, max_new_tokens=40, temperature=0)
    stop = next(ch for ch in free[3:] if ch.strip())          # a character the free answer writes after a few
    g = engine.generate(MESSAGES, max_new_tokens=40, temperature=0, stop=[stop, "zzz"])
    want = "".join(t.text for t in g)
    assert g.finish_reason == "stop" and stop not in want
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=40, temperature=0,
                                  stop=[stop, "zzz"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (want, "stop")
    assert r.usage.completion_tokens == g.completion_tokens
    streamed = list(c.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=40,
                                              temperature=0, stop=[stop, "zzz"], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == want
    # max_completion_tokens is the budget (and wins over max_tokens, as OpenAI's does)
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=5, max_tokens=30,
                                  temperature=0)
    assert r.choices[0].message.content == text_of(engine, MESSAGES, max_new_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    t = c.completions.create(model="tiny", prompt="Hello there", max_tokens=30, temperature=0, stop=stop)
    assert t.choices[0].text == text_of(engine, "Hello there", max_new_tokens=30, temperature=0, stop=[stop])


def test_a_slow_arm_is_rolled_back_by_its_p95_latency(pkg, tmp_path):
    """The andon's latency threshold end to end: the second arm's engine made slow (every prefill waits
    0.3 s) is rolled back once its p95 over its latest requests passes 0.2 s, /routes logs why, and the
    requests after it are the control's."""
    import time as _time
    from webmoe.serve.routes import Route
    from webmoe.serve.server import REGISTRY
    import shutil
    route = Route("chat", [("tiny", 0.5), ("slow", 0.5)], p95_s=0.2, min_requests=3, window=5)
    app = create_app([pkg, shutil.copytree(pkg, tmp_path / "slow")], routes=[route])
    with serving(app) as url:
        c = client(url)
        c.chat.completions.create(model="slow", messages=MESSAGES, max_tokens=1)      # loads it (not the route's)
        engine = app[REGISTRY].versions["slow"].engine
        prefill = engine.prefill

        def slow_prefill(*args, **kwargs):
            _time.sleep(0.3)
            return prefill(*args, **kwargs)
        engine.prefill = slow_prefill
        for _ in range(60):
            c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1, temperature=0)
            if route.events:
                break
        report = json.loads(raw(url, "GET", "/routes")[2])["chat"]
        [event] = report["events"]
        assert event["rolled_back"] == "slow" and event["why"].startswith("p95 latency ")
        assert "over its last " in event["why"] and event["why"].endswith("> 0.2 s")
        assert [a["weight"] for a in report["arms"]] == [1.0, 0.0]
        assert all(c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1).model == "tiny"
                   for _ in range(10))


def test_sixteen_concurrent_streams_share_passes(pkg, engine):
    """16 clients at once, half greedy and half seeded sampling, half streamed: every answer is the one the
    engine gives that request alone, and the server decoded them in shared passes (tokens per pass > 1,
    from /stats: throughput above one stream's without timing anything)."""
    import threading
    prompts = [[{"role": "user", "content": f"Message number {i}: " + "word " * (i % 5)}] for i in range(16)]
    settings = [dict(temperature=0) if i % 2 == 0 else dict(temperature=0.8, top_p=0.9, seed=100 + i)
                for i in range(16)]
    want = [text_of(engine, p, max_new_tokens=12, **kw) for p, kw in zip(prompts, settings)]
    with serving(create_app([pkg], max_batch=16)) as url:
        got = [None] * 16

        def ask(i):
            got[i] = answer_text(client(url), i % 4 >= 2, model="tiny", messages=prompts[i], max_tokens=12,
                                 **settings[i])
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        s = stats(url)
    assert got == want
    assert s["completed"] == 16 and s["batched_tokens"] / s["passes"] > 1.5, s


def test_a_routing_strategy_is_labelled(pkg, engine):
    """A model served with another routing rule says so in /v1/models and answers differently from the
    trained routing; the others keep theirs."""
    with serving(create_app([pkg], routing={"tiny": "hash"})) as url:
        c = client(url)
        assert c.models.retrieve("tiny").model_extra["routing"] == "hash routing (changes the model's output)"
        r = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
    assert r.choices[0].message.content != text_of(engine, MESSAGES, max_new_tokens=8, temperature=0)
    with serving(create_app([pkg])) as url:
        assert client(url).models.retrieve("tiny").model_extra["routing"] == "the model's trained routing"
    with pytest.raises(ValueError, match="not a served model"):
        create_app([pkg], routing={"nope": "top1"})
