"""Chaos on `webmoe serve` (issue 22): clients stream and wait for whole answers while others hang up
mid-stream or while queued, send schemas no JSON satisfies or grammars that fail mid-answer, and an admin
swaps the model between two versions and tries a corrupt package. Every answer that completes equals what
one of the two versions gives that request alone, no ordinary request fails, the queue drains, /stats
accounts for every request, and memory, threads and engines return to their baseline.

The default run lasts 45 s after a 12 s warm-up; `pytest -m soak tests/test_chaos.py` runs it for WEBMOE_SOAK_MINUTES
(default 30), the figures in docs/testing.md."""
import http.client
import json
import os
import random
import re
import shutil
import socket
import threading
import time
from collections import Counter

import openai
import pytest
from transformers import MixtralForCausalLM

from api_client import answer_text
from browser import serving
from test_mixtral import mixtral
from test_serving_faults import RECURSIVE
from webmoe import Engine
from webmoe.converter.convert import convert
from webmoe.engine import constraint
from webmoe.engine.errors import PromptError
from webmoe.serve.server import REGISTRY, create_app
from tiny_models import save_checkpoint

ADMIN = {"Authorization": "Bearer admin"}
PROMPTS = [[{"role": "user", "content": f"Chaos request {i}: " + "word " * (i % 7)}] for i in range(12)]
SETTINGS = [dict(temperature=0) if i % 3 else dict(temperature=0.9, top_p=0.8, seed=40 + i) for i in range(12)]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two versions of one model (other weights) and a corrupt copy, in one package root."""
    root = tmp_path_factory.mktemp("chaos")
    config = mixtral(max_position_embeddings=1024)
    out = []
    for seed, name in ((0, "v1"), (7, "v2")):
        ckpt = save_checkpoint(MixtralForCausalLM, config, root / f"ckpt-{name}", seed=seed)
        out.append(convert(ckpt, root / "models" / name, dtype="f32", progress=False))
    corrupt = shutil.copytree(out[0], root / "models" / "corrupt")
    shard = next(corrupt.glob("expert-*.bin"))
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF
    shard.write_bytes(bytes(data))
    return (*out, corrupt)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def call(url, method, path, body=None):
    c = http.client.HTTPConnection(url.split("//")[1], timeout=300)
    c.request(method, path, body=None if body is None else json.dumps(body),
              headers={"Content-Type": "application/json", **ADMIN})
    r = c.getresponse()
    return r.status, r.read().decode()


def chat(url, body):
    return call(url, "POST", "/v1/chat/completions", body)


def swap(url, path):
    return call(url, "PUT", "/admin/models/v1", {"path": str(path)})


def hang_up(url, after_bytes: int, stream: bool) -> None:
    """A client that sends a request and leaves after reading `after_bytes` of the answer (0: while queued
    or before its first token)."""
    host, port = url.split("//")[1].split(":")
    body = json.dumps({"model": "v1", "messages": random.choice(PROMPTS), "max_tokens": 400, "temperature": 0,
                       "stream": stream})
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        got = b""
        while len(got) < after_bytes:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        if not after_bytes:
            time.sleep(random.uniform(0, 0.3))


def chaos(versions, seconds: float, clients: int = 10, monkeypatch=None, warm_up_s: float = 12.0) -> dict:
    """Runs the chaos for warm_up_s (every kind of request and a swap happen once: first-use allocations),
    takes the baseline once it drained, then for `seconds` more; returns the tallies and the checks' data."""
    v1, v2, corrupt = versions
    want = [{"".join(t.text for t in Engine.load(v).generate(p, max_new_tokens=MAX_TOKENS, **kw)) for v in (v1, v2)}
            for p, kw in zip(PROMPTS, SETTINGS)]
    # a grammar that fails mid-answer, now and then: what llguidance's parser limits do to some schemas
    push = constraint.Constraint.push

    def flaky_push(c, token):
        if random.random() < 0.15:
            raise PromptError(f"token {token} breaks the grammar (injected)")
        return push(c, token)
    monkeypatch.setattr(constraint.Constraint, "push", flaky_push)

    app = create_app([v1], max_batch=4, admission={"max_waiting": 64, "max_wait_s": 120}, admin_keys=("admin",),
                     package_roots=[v1.parent])
    tally, problems = Counter(), []
    with serving(app) as url:
        registry = app[REGISTRY]
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)

        def ordinary(i, stream):
            text = answer_text(c, stream, model="v1", messages=PROMPTS[i], max_tokens=MAX_TOKENS, **SETTINGS[i])
            if text not in want[i]:
                problems.append(f"request {i} got {text!r}, alone it gets one of {want[i]}")
            tally["answers"] += 1

        def user(seed, deadline):
            rng = random.Random(seed)
            while time.monotonic() < deadline:
                action = rng.choices(["stream", "whole", "hang up streaming", "hang up queued", "unsatisfiable",
                                      "failing grammar"], [4, 3, 2, 1, 1, 1])[0]
                try:
                    if action in ("stream", "whole"):
                        ordinary(rng.randrange(len(PROMPTS)), action == "stream")
                    elif action == "hang up streaming":
                        hang_up(url, rng.randrange(200, 3000), stream=True)
                    elif action == "hang up queued":
                        hang_up(url, 0, stream=rng.random() < 0.5)
                    elif action == "unsatisfiable":
                        status, text = chat(url, {"model": "v1", "messages": PROMPTS[0], "response_format": {
                            "type": "json_schema", "json_schema": {"name": "n", "schema": RECURSIVE}}})
                        if status != 400:
                            problems.append(f"an unsatisfiable schema got {status}: {text[:200]}")
                    else:
                        status, text = chat(url, {"model": "v1", "messages": PROMPTS[1], "max_tokens": MAX_TOKENS,
                                                  "response_format": {"type": "json_object"}})
                        if status not in (200, 400) or (status == 400 and "(injected)" not in text):
                            problems.append(f"a failing grammar got {status}: {text[:200]}")
                    tally[action] += 1
                except Exception as e:             # noqa: BLE001 - any failure of an ordinary request counts
                    problems.append(f"{action}: {type(e).__name__}: {str(e)[:300]}")

        def admin(deadline):
            versions = [v2, v1]
            while time.monotonic() < deadline:
                time.sleep(2.0)
                status, text = swap(url, corrupt)
                if status != 400 or "corrupt" not in text:
                    problems.append(f"a swap to a corrupt package got {status}: {text[:200]}")
                status, text = swap(url, versions[tally["swaps"] % 2])
                if status != 200:
                    problems.append(f"a swap got {status}: {text[:200]}")
                tally["swaps"] += 1

        def phase(seconds: float, seed: int) -> dict:
            deadline = time.monotonic() + seconds
            threads = [threading.Thread(target=user, args=(seed + i, deadline)) for i in range(clients)]
            threads.append(threading.Thread(target=admin, args=(deadline,)))
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 600)
            end = time.monotonic() + 30
            while True:                            # the queue drains: nothing runs, nothing waits
                s = json.loads(call(url, "GET", "/stats")[1])["v1"]
                if (s["running"] == 0 and s["waiting"] == 0 and not registry.retired) or time.monotonic() > end:
                    return s

        phase(warm_up_s, seed=1000)
        base_rss, base_threads = settled_rss_mib(), thread_kinds()
        tally.clear()
        s = phase(seconds, seed=0)
        drained = {"running": s["running"], "waiting": s["waiting"], "retired_versions": len(registry.retired)}
        rss, threads_now = settled_rss_mib(), thread_kinds()
    return {"seconds": seconds, "clients": clients, "tally": dict(tally), "problems": problems, "stats": s,
            "drained": drained, "rss_mib": (round(base_rss, 1), round(rss, 1)), "threads": (base_threads, threads_now)}


def thread_kinds() -> dict[str, int]:
    """Live threads by kind: class and name with its counters blanked (each loaded engine's device has a
    wgpu PollThread, named Thread-N with a new N for every device)."""
    return dict(Counter(f"{type(t).__name__} {re.sub(r'[0-9]+', 'N', t.name)}" for t in threading.enumerate()))


def grown_threads(base: dict[str, int], end: dict[str, int]) -> dict[str, int]:
    """Kinds of thread more numerous at the end than at the baseline, less the workers of asyncio's default
    executor, which starts one only when every one it has is busy (so a longer phase may meet a busier
    moment) and no more than its bound."""
    bound = min(32, (os.cpu_count() or 1) + 4)             # ThreadPoolExecutor's default max_workers
    return {kind: n for kind, n in end.items()
            if n > base.get(kind, 0) and not (kind == "Thread asyncio_N" and n <= bound)}


def settled_rss_mib() -> float:
    """The process's resident memory once workers that were stopping have ended and the C heap has handed
    back its free pages: what the server keeps, not what malloc caches. (No gc.collect() here: memory that
    only the cyclic collector would free, some time, counts.)"""
    import ctypes
    time.sleep(1.0)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mib()


def check(report) -> None:
    print(json.dumps(report, indent=1))
    s, tally = report["stats"], report["tally"]
    assert report["problems"] == [], report["problems"][:10]
    assert report["drained"] == {"running": 0, "waiting": 0, "retired_versions": 0}
    assert s["requests"] == s["completed"] + s["cancelled"] + s["failed"] + s["rejected"], s
    assert s["rejected"] == 0 and tally["answers"] > 0 and tally["swaps"] > 0
    assert tally.get("hang up streaming", 0) > 0 and tally.get("failing grammar", 0) > 0
    base, end = report["rss_mib"]
    assert end < base + 32, f"memory grew from {base} to {end} MiB"
    base_threads, end_threads = report["threads"]
    assert not grown_threads(base_threads, end_threads), f"threads grew: {base_threads} -> {end_threads}"


def test_chaos(versions, monkeypatch):
    check(chaos(versions, seconds=45, monkeypatch=monkeypatch))


@pytest.mark.soak
def test_chaos_soak(versions, monkeypatch):
    check(chaos(versions, seconds=60 * float(os.environ.get("WEBMOE_SOAK_MINUTES", 30)), clients=16,
                monkeypatch=monkeypatch))
