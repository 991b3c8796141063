"""`webmoe serve` under faults and misuse (issue 22): a request that fails leaves every other request of
its batch alone and never sees another's data; admission keeps its word (free slots and waiting places
are all usable, a client that leaves frees its place at once, /stats accounts for every request); the
statistics sit behind the keys, other origins cannot drive the API, the body limit is the documented
one, admin swaps come only from the package roots, and feedback counts one vote per completion and key."""
import gc
import http.client
import json
import shutil
import socket
import threading
import time

import openai
import pytest
from transformers import MixtralForCausalLM

from api_client import answer_text
from browser import serving
from test_mixtral import mixtral
from webmoe import Engine
from webmoe.converter.convert import convert
from webmoe.engine import constraint
from webmoe.engine.errors import PromptError
from webmoe.serve.server import create_app
from tiny_models import save_checkpoint

KEY = "sk-faults"
MESSAGES = [{"role": "user", "content": "Beautiful is better than ugly."}]
RECURSIVE = {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}, "required": ["c"]}},
             "$ref": "#/$defs/n"}


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return convert(save_checkpoint(MixtralForCausalLM, mixtral(max_position_embeddings=4096), root / "ckpt"),
                   root / "models" / "tiny", dtype="f32", progress=False)


@pytest.fixture(scope="module")
def engine(pkg):
    return Engine.load(pkg)


def client(url, key=None):
    return openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0, timeout=120)


def raw(url, method, path, body=None, headers=None, content_type="application/json"):
    c = http.client.HTTPConnection(url.split("//")[1], timeout=120)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    c.request(method, path, body=data, headers={**({"Content-Type": content_type} if content_type else {}),
                                                **(headers or {})})
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read().decode()


def stats(url, key=None):
    return json.loads(raw(url, "GET", "/stats", headers={"Authorization": f"Bearer {key}"} if key else {})[2])["tiny"]


def accounted(s) -> bool:
    return s["requests"] == s["completed"] + s["cancelled"] + s["failed"] + s["rejected"]


def open_request(url, max_tokens, stream=True, key=None):
    """A chat request on a raw socket (not read): its client can go away at any moment by closing it."""
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    body = json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
                       "stream": stream})
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    return s


def wait_for(check, timeout=60.0):
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


# --- one request's failure stays its own ------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["grammar", "device"])
def test_a_failing_request_leaves_the_batch_alone(pkg, engine, monkeypatch, capfd, fault):
    """Four ordinary completions decode; a fifth with a JSON-mode grammar fails — its grammar refuses the
    first token it samples (what llguidance's parser limits did to a self-referring schema, issue 22), or
    the device fails every pass that holds its row. It gets an error of its own (400 for its grammar, 500
    for the device) that says nothing of the other requests; the four get the answers they get alone. A
    schema no JSON can satisfy is a 400 before it runs."""
    prompts = [[{"role": "user", "content": f"Request {i}: " + "word " * i}] for i in range(4)]
    want = ["".join(t.text for t in engine.generate(p, max_new_tokens=150, temperature=0)) for p in prompts]
    if fault == "grammar":
        def refuse(c, token):
            raise PromptError(f"token {token} breaks the grammar")
        monkeypatch.setattr(constraint.Constraint, "push", refuse)
    else:
        decode = Engine.decode

        def faulty(self, rows, sampling, return_logits=False):
            if any(s.mask is not None for s in sampling):        # a row under a grammar's mask
                raise RuntimeError("injected device fault: secret internals")
            return decode(self, rows, sampling, return_logits)
        monkeypatch.setattr(Engine, "decode", faulty)
    with serving(create_app([pkg])) as url:
        got, started = [None] * 4, threading.Barrier(5)

        def ask(i):
            started.wait()
            got[i] = answer_text(client(url), i % 2 == 0, model="tiny", messages=prompts[i], max_tokens=150,
                                 temperature=0)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        started.wait()
        wait_for(lambda: stats(url)["running"] == 4)
        with pytest.raises(openai.APIStatusError) as e:
            client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, temperature=0,
                                                response_format={"type": "json_object"})
        with pytest.raises(openai.BadRequestError, match="cannot be satisfied"):
            client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=40, response_format={
                "type": "json_schema", "json_schema": {"name": "n", "schema": RECURSIVE}})
        for t in threads:
            t.join(300)
        s = stats(url)
    assert got == want
    message = e.value.body["message"]
    if fault == "grammar":
        assert e.value.status_code == 400 and "breaks the grammar" in message
    else:
        assert e.value.status_code == 500 and message == "generation failed: the engine failed on this sequence"
        assert "injected device fault" in capfd.readouterr().err         # the traceback: on the console only
    assert "Request" not in message and "Sequence" not in message and "word" not in message
    assert s["requests"] == 5 and s["completed"] == 4 and s["failed"] == 1 and accounted(s), s


# --- admission ----------------------------------------------------------------------------------------------

def test_clients_that_leave_the_queue_free_their_places(pkg, capfd):
    """Two requests run (max_batch 2) and two wait (max_waiting 2). The waiting clients hang up: their places
    are free at once (waiting 0), so two new requests may wait instead of getting 429; the ones that left
    never take a slot, no traceback reaches the console, and /stats accounts for every request."""
    app = create_app([pkg], max_batch=2, admission={"max_waiting": 2, "max_wait_s": 120})
    with serving(app) as url:
        running = [open_request(url, 3000) for _ in range(2)]
        wait_for(lambda: stats(url)["running"] == 2)
        leaving = [open_request(url, 5, stream=False) for _ in range(2)]
        wait_for(lambda: stats(url)["waiting"] == 2)
        for s in leaving:
            s.close()
        t0 = time.monotonic()
        wait_for(lambda: stats(url)["waiting"] == 0, timeout=5)
        assert time.monotonic() - t0 < 1.0                # at once (it polls every 0.1 s)
        answers = []
        waiters = [threading.Thread(target=lambda: answers.append(client(url).chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=3, temperature=0))) for _ in range(2)]
        for t in waiters:
            t.start()
        wait_for(lambda: stats(url)["waiting"] == 2)
        for s in running:
            s.close()
        for t in waiters:
            t.join(120)
        wait_for(lambda: stats(url)["running"] == 0)
        s = stats(url)
    assert len(answers) == 2 and all(a.usage.completion_tokens == 3 for a in answers)
    assert s["requests"] == 6 and s["cancelled"] == 4 and s["completed"] == 2 and s["rejected"] == 0, s
    assert accounted(s)
    assert "Traceback" not in capfd.readouterr().err


def test_a_burst_fills_free_slots_then_the_queue(pkg):
    """At an idle server with 4 slots and 2 waiting places, 6 requests sent at once are all admitted; of 12
    at once, 4 run, 2 wait and 6 get 429 with Retry-After."""
    app = create_app([pkg], max_batch=4, admission={"max_waiting": 2, "max_wait_s": 120})
    with serving(app) as url:
        for burst, admitted in ((6, 6), (12, 6)):
            statuses, gate = [], threading.Barrier(burst)

            def ask():
                gate.wait()
                statuses.append(raw(url, "POST", "/v1/chat/completions", {
                    "model": "tiny", "messages": MESSAGES, "max_tokens": 300, "temperature": 0})[0])
            threads = [threading.Thread(target=ask) for _ in range(burst)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            assert sorted(statuses) == [200] * admitted + [429] * (burst - admitted), statuses
        s = stats(url)
    assert s["completed"] == 12 and s["rejected"] == 6 and accounted(s), s


# --- access ---------------------------------------------------------------------------------------------------

def test_statistics_need_the_key_and_other_origins_cannot_drive_the_api(pkg):
    with serving(create_app([pkg], api_keys=(KEY,))) as url:
        for path in ("/stats", "/routes"):
            status, _, body = raw(url, "GET", path)
            assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
            assert raw(url, "GET", path, headers={"Authorization": f"Bearer {KEY}"})[0] == 200
        assert raw(url, "GET", "/health")[0] == 200 and raw(url, "GET", "/ready")[0] == 200
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 1}
    with serving(create_app([pkg], cors_origins=("http://allowed.example",))) as url:
        # a "simple" cross-origin POST, which a browser sends without a preflight: refused either way
        status, _, text = raw(url, "POST", "/v1/chat/completions", json.dumps(body).encode(),
                              {"Origin": "http://evil.example"}, content_type="text/plain")
        assert status == 403 and "may not call this API" in json.loads(text)["error"]["message"]
        status, _, text = raw(url, "POST", "/v1/chat/completions", body, {"Origin": "http://evil.example"})
        assert status == 403
        status, _, text = raw(url, "POST", "/v1/chat/completions", json.dumps(body).encode(), content_type="text/plain")
        assert status == 415 and "Content-Type: application/json" in json.loads(text)["error"]["message"]
        assert raw(url, "POST", "/v1/chat/completions", body, {"Origin": url})[0] == 200          # same origin
        assert raw(url, "POST", "/v1/chat/completions", body, {"Origin": "http://allowed.example"})[0] == 200
        assert raw(url, "POST", "/v1/chat/completions", body)[0] == 200                          # no browser
        assert raw(url, "GET", "/models", headers={"Origin": "http://evil.example"})[0] == 200    # files are public
    # a page whose name was rebound to 127.0.0.1 (DNS rebinding) is same-origin by its own lights
    with serving(create_app([pkg], loopback_only=True)) as url:
        rebound = "evil.example:" + url.rsplit(":", 1)[1]
        status, _, text = raw(url, "POST", "/v1/chat/completions", body,
                              {"Host": rebound, "Origin": f"http://{rebound}"})
        assert status == 403 and "answers its API only as localhost" in text
        assert raw(url, "POST", "/v1/chat/completions", body, {"Origin": url})[0] == 200
        assert raw(url, "POST", "/v1/chat/completions", body, {"Host": "localhost"})[0] == 200


def test_the_body_limit_is_the_documented_one(pkg):
    """A 2 MB prompt (within the schema's 4 MiB) reaches the model and is refused for its length, not for its
    bytes; a body over 16 MiB is a 413."""
    with serving(create_app([pkg])) as url:
        big = [{"role": "user", "content": "word " * 400_000}]
        status, _, text = raw(url, "POST", "/v1/chat/completions", {"model": "tiny", "messages": big, "max_tokens": 1})
        assert status == 400 and "tokens" in json.loads(text)["error"]["message"], text
        status, _, text = raw(url, "POST", "/v1/chat/completions", b"{" + b" " * (17 << 20) + b"}")
        assert status == 413 and json.loads(text)["error"]["type"] == "invalid_request_error"


# --- admin swaps and feedback ------------------------------------------------------------------------------

def test_admin_swaps_only_from_package_roots(pkg, tmp_path):
    """Paths outside the package roots — /etc/passwd, a missing file, a symbolic link inside a root that
    leads out, a NUL byte, 5,000 characters — all get the same 400, which says nothing about them; a package
    in a root with a corrupted shard is a 400 naming the shard; a good one swaps in."""
    root = tmp_path / "root"
    root.mkdir()
    good = shutil.copytree(pkg, root / "v2")
    bad = shutil.copytree(pkg, root / "corrupt")
    shard = next(bad.glob("expert-*.bin"))
    data = bytearray(shard.read_bytes())
    data[7] ^= 0xFF
    shard.write_bytes(bytes(data))
    (root / "escape").symlink_to(pkg.parent)
    admin = {"Authorization": "Bearer admin"}
    with serving(create_app([pkg], admin_keys=("admin",), package_roots=[root])) as url:
        outside = set()
        for path in ("/etc/passwd", "/etc/no-such-file", str(root / "escape" / "tiny"), str(root) + "\0x",
                     "x" * 5000, str(root), str(pkg)):
            status, _, text = raw(url, "PUT", "/admin/models/tiny", {"path": path}, admin)
            assert status == 400, (path[:80], text)
            outside.add(json.loads(text)["error"]["message"])
        assert len(outside) == 1 and "package root" in outside.pop()
        status, _, text = raw(url, "PUT", "/admin/models/tiny", {"path": str(bad)}, admin)
        assert status == 400 and "is corrupt (sha256 mismatch)" in text, text
        status, _, text = raw(url, "PUT", "/admin/models/tiny", {"path": str(good)}, admin)
        assert status == 200 and json.loads(text)["path"] == str(good.resolve())


def test_feedback_counts_one_vote_per_completion_and_key(pkg, tmp_path):
    """One key voting 50 times on a completion counts once (its latest vote); another key's vote counts
    too; an id that is not a completion id is a 400 that does not echo it."""
    from webmoe.serve.routes import Route
    other = shutil.copytree(pkg, tmp_path / "other")
    app = create_app([pkg, other], api_keys=(KEY, "sk-second"), routes=[Route("chat", [("tiny", 0.5), ("other", 0.5)])])
    with serving(app) as url:
        r = client(url, KEY).chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1)
        auth = {"Authorization": f"Bearer {KEY}"}
        for i in range(50):
            status, _, text = raw(url, "POST", "/v1/feedback", {"id": r.id, "positive": i % 2 == 0}, auth)
            assert status == 200 and json.loads(text)["replaced"] == (i > 0)
        raw(url, "POST", "/v1/feedback", {"id": r.id, "positive": True}, {"Authorization": "Bearer sk-second"})
        arms = {a["model"]: a for a in json.loads(raw(url, "GET", "/routes", headers=auth)[2])["chat"]["arms"]}
        assert arms[r.model]["feedback"] == {"positive": 1, "negative": 1}        # key 1: its last vote (49: no)
        status, _, text = raw(url, "POST", "/v1/feedback", {"id": "x" * 60_000, "positive": True}, auth)
        assert status == 400 and len(text) < 400 and "xxxx" not in text
        status, _, text = raw(url, "POST", "/v1/feedback", {"id": "chatcmpl-nope", "positive": True}, auth)
        assert status == 404


def poll_threads() -> int:
    """wgpu's polling threads: one per GPU device alive."""
    return sum(type(t).__name__ == "PollThread" for t in threading.enumerate())


def test_a_swapped_out_model_gives_its_device_back_at_once(pkg, tmp_path):
    """wgpu-py's device refers to itself, so a dropped engine's device (its GPU memory, its polling thread)
    waited for Python's cyclic collector. With the collector off: the old version's device is gone once
    its last request ends, and every device is gone once the server stops."""
    root = tmp_path / "root"
    good = shutil.copytree(pkg, root / "v2")
    admin = {"Authorization": "Bearer admin"}
    gc.disable()
    try:
        before = poll_threads()
        with serving(create_app([pkg], admin_keys=("admin",), package_roots=[root])) as url:
            answer = client(url).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
            assert answer.choices[0].message.content is not None and poll_threads() == before + 1
            status, _, text = raw(url, "PUT", "/admin/models/tiny", {"path": str(good)}, admin)
            assert status == 200, text
            wait_for(lambda: poll_threads() == before + 1, timeout=10)
        assert poll_threads() == before
    finally:
        gc.enable()
