"""The browser runtime in headless Chromium (WebGPU on SwiftShader): parity with the native engine,
the OPFS cache, resumed downloads, the quota check and the chat page."""
import asyncio
import json
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from transformers import MixtralForCausalLM

from browser import GREEDY, LOAD, LOGITS, assert_matches_native, browser, open_page, private_window, serving
from parity import TOLERANCE
from shader_cases import CASES as SHADER_CASES, FILES as SHADER_FILES
from test_mixtral import CONFIGS, mixtral
from webmoe.converter.convert import convert
from webmoe import Engine
from webmoe.format.manifest import seal_manifest
from webmoe.serve.server import PACKAGE_CORS, PACKAGES, create_app
from tiny_models import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
SCREENSHOTS = ROOT / "out" / "screenshots"


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    out = {}
    for name, dtype in (("gqa-top2", "f32"), ("odd-sizes-top3", "f16")):
        ckpt = save_checkpoint(MixtralForCausalLM, CONFIGS[name], root / f"ckpt-{name}")
        out[f"{name}-{dtype}"] = convert(ckpt, root / f"{name}-{dtype}", dtype=dtype, progress=False)
    return out


class Recorder:
    """aiohttp middleware that records requests and can cut the first response for one file mid-way,
    refuse every shard (503) or serve every shard with its bytes inverted."""

    def __init__(self, refuse: bool = False, corrupt: bool = False):
        self.requests: list[tuple[str, str | None]] = []
        self.cut: str | None = None
        self.refuse, self.corrupt = refuse, corrupt
        self.middleware = web.middleware(lambda request, handler: self.handle(request, handler))

    async def handle(self, request, handler):
        self.requests.append((request.path, request.headers.get("Range")))
        if request.path.endswith(".bin") and self.refuse:
            return web.Response(status=503)
        if request.path.endswith(".bin") and self.corrupt:
            path = next(p for p in request.app[PACKAGES].values()).dir / request.path.rsplit("/", 1)[1]
            return web.Response(body=bytes(b ^ 0xFF for b in path.read_bytes()), content_type="application/octet-stream",
                                headers=PACKAGE_CORS)          # the bytes reach the page, and fail its sha256
        if self.cut and request.path.endswith("/" + self.cut):
            self.cut = None
            path = next(p for p in request.app[PACKAGES].values()).dir / request.path.rsplit("/", 1)[1]
            data = path.read_bytes()
            resp = web.StreamResponse(headers={"Content-Length": str(len(data)),
                                               "Content-Type": "application/octet-stream"})
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            await asyncio.sleep(0.5)           # the first half reaches the page ...
            request.transport.close()          # ... then the connection drops mid-shard
            return resp
        return await handler(request)

    def shard_requests(self):
        return [(p, r) for p, r in self.requests if p.endswith(".bin")]


def app_with(recorder, *pkgs):
    app = create_app(list(pkgs))
    app.middlewares.append(recorder.middleware)
    return app


def manifest_url(pkg):
    return f"/models/{Path(pkg).name}/manifest.json"


def browser_logits(page, ids):
    return np.array(page.evaluate(LOGITS, [ids]), np.float32).reshape(len(ids), -1)


def check_parity(page, pkg, prompt_len=21, n_greedy=16, native=None):
    native = native or Engine.load(pkg)
    vocab = native.vocab_size
    rng = np.random.default_rng(5)
    ids = rng.integers(3, min(vocab, 400), prompt_len).tolist()
    ours, ref = browser_logits(page, ids), native.logits(ids)
    assert_matches_native(ours, ref)
    b = page.evaluate(GREEDY, [ids[:6], n_greedy])
    n = [t.id for t in native.generate(ids[:6], max_new_tokens=n_greedy, temperature=0)]
    if b != n:   # allowed only at a near tie of the native logits
        i = next(i for i, (x, y) in enumerate(zip(b, n)) if x != y)
        last = native.logits(ids[:6] + n[:i])[-1]
        assert last[n[i]] - last[b[i]] <= TOLERANCE["f32"] * np.abs(last).max(), (i, b, n)


MIXTRAL_PACKAGES = ("gqa-top2-f32", "odd-sizes-top3-f16", "odd-sizes-top3-q8", "odd-sizes-top3-q4")
# every block format in Chromium, whose SwiftShader has no shader-f16: name -> (preset, other parts' formats)
QUANTISED_PACKAGES = {"odd-sizes-top3-q8": ("q8", {}),
                      "odd-sizes-top3-q4": ("q4", {"embed": "q4", "head": "q4"}),
                      "gpt_oss-mxfp4": ("q8", {"experts": "mxfp4", "attention": "mxfp4", "embed": "q4"})}


@pytest.fixture(scope="module")
def family_site(tmp_path_factory, packages):
    """One package of every family (f32) plus the Mixtral ones, served to one Chromium."""
    from test_families import CASES as FAMILY_CASES
    root = tmp_path_factory.mktemp("families")
    pkgs = dict(packages)
    for case in ("qwen3_moe", "qwen2_moe", "olmoe", "phimoe", "deepseek_v3", "gpt_oss"):
        model_cls, config = FAMILY_CASES[case]
        pkgs[case] = convert(save_checkpoint(model_cls, config, root / f"ckpt-{case}"), root / case, dtype="f32",
                             progress=False)
    for name, (preset, parts) in QUANTISED_PACKAGES.items():
        model_cls, config = FAMILY_CASES["gpt_oss"] if name.startswith("gpt_oss") else \
            (MixtralForCausalLM, CONFIGS["odd-sizes-top3"])
        pkgs[name] = convert(save_checkpoint(model_cls, config, root / f"ckpt-{name}"), root / name, dtype=preset,
                             part_dtypes=parts, progress=False)
    with serving(create_app(list(pkgs.values()))) as url, browser() as ctx:
        yield url, ctx, pkgs


@pytest.mark.parametrize("name", [*MIXTRAL_PACKAGES, "qwen3_moe", "qwen2_moe", "olmoe", "phimoe",
                                  "deepseek_v3", "gpt_oss", "gpt_oss-mxfp4"])
def test_browser_matches_native(family_site, name):
    """The same plan and kernels in Chromium (SwiftShader) give the native engine's logits and tokens, for
    every weight format (the native kernels are checked against numpy's decoding in test_kernels.py)."""
    url, ctx, pkgs = family_site
    page = open_page(ctx, url + "/")
    try:
        info = page.evaluate(LOAD, [manifest_url(pkgs[name])])
        assert info["family"] == ("mixtral" if name in MIXTRAL_PACKAGES else name.split("-")[0])
        assert "swiftshader" in info["adapter"].lower()
        check_parity(page, pkgs[name])
    finally:
        page.close()


@pytest.fixture(scope="module")
def lowered_site(tmp_path_factory):
    """Packages cut for 8 KiB bindings (tests/test_binding_limits.py), served to one Chromium."""
    from test_binding_limits import LIMIT, ONE_PER_FAMILY
    root = tmp_path_factory.mktemp("lowered")
    pkgs = {}
    for case in ("qwen3_moe", "deepseek_v3", "gpt_oss"):
        model_cls, config = ONE_PER_FAMILY[case]
        pkgs[case] = convert(save_checkpoint(model_cls, config, root / f"ckpt-{case}"), root / case, dtype="f32",
                             progress=False, max_binding=LIMIT)
    with serving(create_app(list(pkgs.values()))) as url, browser() as ctx:
        yield url, ctx, pkgs, LIMIT


@pytest.mark.parametrize("name", ["qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_browser_at_a_lowered_binding_limit(lowered_site, name):
    """Split embeddings, LM heads and dense matrices, experts in pieces (qwen3_moe) and a slab of many
    banks in Chromium: the native engine's logits and tokens at the same limit."""
    url, ctx, pkgs, limit = lowered_site
    options = {"maxBinding": limit, "chunkTokens": 4, "maxSeqLen": 56}
    native = Engine.load(pkgs[name], max_binding=limit, chunk_tokens=4, max_seq_len=56)
    page = open_page(ctx, url + "/")
    try:
        info = page.evaluate(LOAD, [manifest_url(pkgs[name]), options])
        assert f"in {len(native.experts.banks)} banks" in info["description"] and len(native.experts.banks) > 1
        check_parity(page, pkgs[name], native=native)
    finally:
        page.close()


def test_browser_matches_native_on_the_demo_model():
    """Logits, greedy tokens, tokenisation and chat templates (@huggingface/tokenizers and
    @huggingface/jinja against tokenizers and jinja2), stop(), and deleting the cached model."""
    rec = Recorder()
    native = Engine.load(DEMO)
    with serving(app_with(rec, DEMO)) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(DEMO)])
        check_parity(page, DEMO, prompt_len=40, n_greedy=24)
        for prompt in ("KING HENRY. Once more unto the breach, dear friends!\n  Où est-il? — 1599",
                       [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Good day."},
                        {"role": "user", "content": "How art thou?"}]):
            assert page.evaluate("async ([p]) => window.engine.tokenize(p)", [prompt]) == \
                native.tokenizer.prompt_ids(prompt)
        # stop() ends a running generation early
        count = page.evaluate("""async () => {
          let n = 0;
          for await (const t of window.engine.generate('ROMEO.', {maxNewTokens: 400, temperature: 0})) {
            if (++n === 5) window.engine.stop();
          }
          return n;
        }""")
        assert 5 <= count < 40, count
        cached = page.evaluate("async () => (await import('/web/dist/standalone/webmoe.js')).listCached()")
        assert len(cached) == 1 and cached[0]["complete"]
        page.evaluate("async ([id]) => (await import('/web/dist/standalone/webmoe.js')).deleteCached(id)", [cached[0]["id"]])
        assert page.evaluate("async () => (await import('/web/dist/standalone/webmoe.js')).listCached()") == []


@pytest.mark.parametrize("prefetch", [False, True])
def test_expert_paging_from_opfs_matches_native(packages, prefetch):
    """Experts that exceed both the GPU budget (the minimum: one slot) and the in-memory budget (3 shards)
    are paged in from OPFS, and the logits and greedy tokens are those of the native engine with every
    expert resident; with prefetch too."""
    pkg = packages["odd-sizes-top3-f16"]
    native = Engine.load(pkg)
    slot = native.experts.slot_bytes
    ids = list(range(7, 47))
    ref = native.logits(ids)
    ref_tokens = [t.id for t in native.generate(ids[:6], max_new_tokens=12, temperature=0)]
    with serving(create_app([pkg])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate("""async ([m, gpu, mem, prefetch]) => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          window.engine = await webmoe.load(m, {expertCacheBytes: gpu, memoryCacheBytes: mem, prefetch});
        }""", [manifest_url(pkg), slot, 3 * slot, prefetch])
        assert_matches_native(browser_logits(page, ids), ref)
        assert page.evaluate(GREEDY, [ids[:6], 12]) == ref_tokens
        stats = page.evaluate("async () => window.engine.expertStats()")
        assert stats["paging"] and stats["slots"] == 1 and stats["resident"] <= 1
        total = stats["total"]
        assert total["misses"] > 0 and total["hits"] + total["misses"] == total["lookups"]
        assert total["bytes_uploaded"] == (total["misses"] + total["prefetched"]) * slot
        assert (total["predicted"] > 0) == prefetch and total["predicted_used"] <= total["predicted"]
        memory = stats["memory"]
        assert memory["evictions"] > 0 and memory["bytes"] <= 3 * slot and memory["misses"] > 0


def test_browser_bench_bookkeeping(packages):
    """`webmoe bench --browser` (its bookkeeping, not its speed): one slot misses every lookup."""
    from webmoe.tools.bench_browser import bench_browser
    rows = bench_browser(packages["gqa-top2-f32"], tokens=3, runs=((1.0, False), (0.0, False)), repeats=1)
    assert [r["label"] for r in rows] == ["100%", "min (1 slot)"]
    assert rows[0]["bytes_per_token"] == 0 and rows[1]["slots"] == 1 and rows[1]["hit_rate"] == 0.0
    assert rows[1]["bytes_per_token"] > 0 and "swiftshader" in rows[0]["adapter"].lower()


def test_opfs_cache_second_load_corruption_and_resume(packages):
    pkg = packages["gqa-top2-f32"]
    m = json.loads((pkg / "manifest.json").read_text())
    n_shards = sum(s["kind"] != "tokenizer" for s in m["shards"])      # the weight shards (.bin)
    cut_shard = "expert-L001-E003.bin"
    rec = Recorder()
    rec.cut = cut_shard
    ids = list(range(5, 25))
    native = Engine.load(pkg).logits(ids)
    with serving(app_with(rec, pkg)) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(pkg)])
        first = rec.shard_requests()
        # every shard fetched once, plus a resumed request for the cut one that starts where it broke off
        cut = [r for p, r in first if p.endswith(cut_shard)]
        size = next(s["size"] for s in m["shards"] if s["file"] == cut_shard)
        assert cut == [None, f"bytes={size // 2}-"], cut
        assert len(first) == n_shards + 1
        assert_matches_native(browser_logits(page, ids), native)

        # a second load (new page, new worker) reads every shard from OPFS
        page.close()
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(pkg)])
        assert rec.shard_requests() == first

        # a shard corrupted in OPFS is detected by its hash and fetched again, and a deleted one too
        page.evaluate("""async ([file]) => {
          const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('webmoe');
          for await (const [, dir] of root.entries()) {
            const w = await (await dir.getFileHandle(file)).createWritable({keepExistingData: true});
            await w.write({type: 'write', position: 64, data: new Uint8Array(16).fill(7)});
            await w.close();
          }
        }""", ["expert-L000-E002.bin"])
        page.evaluate("""async ([file]) => {      // and another one deleted
          const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('webmoe');
          for await (const [, dir] of root.entries()) await dir.removeEntry(file);
        }""", ["expert-L001-E000.bin"])
        page.close()
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(pkg)])
        again = rec.shard_requests()[len(first):]
        assert sorted(p.rsplit("/", 1)[1] for p, _ in again) == ["expert-L000-E002.bin", "expert-L001-E000.bin"]
        assert_matches_native(browser_logits(page, ids), native)
        cached = page.evaluate("async () => (await import('/web/dist/standalone/webmoe.js')).listCached()")
        assert len(cached) == 1 and cached[0]["complete"] and cached[0]["bytes"] >= sum(s["size"] for s in m["shards"])


def test_experts_on_demand(tmp_path):
    """expertsOnDemand: the load downloads the dense and tokenizer shards only, the prompt then fetches the
    shards of exactly the experts the router chose (the server's log against the native engine's routing),
    each once, and the logits are those of the native engine; the model is not complete in OPFS. A later load
    with backgroundDownload completes it, fetching every other shard once."""
    config = mixtral(num_local_experts=24, num_experts_per_tok=1, num_hidden_layers=2)
    pkg = convert(save_checkpoint(MixtralForCausalLM, config, tmp_path / "ckpt"), tmp_path / "many-experts",
                  dtype="f16", progress=False)
    ids = [5, 77, 300]
    native = Engine.load(pkg, observe_routing=True)
    want = native.logits(ids)
    m = json.loads((pkg / "manifest.json").read_text())
    routed = {m["experts"][f"{l}_{e}"]["shard"] for l, use in native.experts.usage.items() for e in np.nonzero(use)[0]}
    experts = {s["file"] for s in m["shards"] if s["kind"] == "expert"}
    assert 0 < len(routed) <= 2 * len(ids) < len(experts)
    rec = Recorder()
    with serving(app_with(rec, pkg)) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(pkg), {"expertsOnDemand": True, "prefetch": False}])
        at_load = [Path(p).name for p, _ in rec.shard_requests()]
        assert sorted(at_load) == sorted(s["file"] for s in m["shards"] if s["kind"] != "expert" and
                                         s["file"].endswith(".bin"))
        got = browser_logits(page, ids)
        fetched = [Path(p).name for p, _ in rec.shard_requests()][len(at_load):]
        assert sorted(fetched) == sorted(routed)              # each routed expert once, no other
        cached = page.evaluate("async () => (await import('/web/dist/standalone/webmoe.js')).listCached()")
        assert len(cached) == 1 and not cached[0]["complete"]
        # the next load, allowed to fill OPFS in the background, fetches the rest once each
        page.close()
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(pkg), {"expertsOnDemand": True, "backgroundDownload": True}])
        for _ in range(240):
            if page.evaluate("async () => (await (await import('/web/dist/standalone/webmoe.js')).listCached())[0].complete"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the background download did not complete the model in 120 s")
    assert_matches_native(got, want)
    names = [Path(p).name for p, _ in rec.shard_requests()]
    assert sorted(names) == sorted(s["file"] for s in m["shards"] if s["file"].endswith(".bin"))


def test_hot_experts_download_with_the_dense_shards(tmp_path):
    """With routing statistics in the package (`webmoe analyze --into-package`), a load with hotExperts 0.5
    downloads, beside the dense shards, exactly each layer's fewest most-used experts that took half of its
    routed tokens (computed here from the statistics with numpy), and the logits are the native engine's."""
    from webmoe.tools.analyze import analyze, into_package
    config = mixtral(num_local_experts=12, num_experts_per_tok=2, num_hidden_layers=2)
    pkg = convert(save_checkpoint(MixtralForCausalLM, config, tmp_path / "ckpt"), tmp_path / "hot",
                  dtype="f16", progress=False)
    into_package(analyze(pkg, ["hello there", "the quick brown fox"], max_new_tokens=6), pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    hot = set()
    for layer, counts in m["routing_stats"]["usage"].items():
        c = np.array(counts)
        order = np.argsort(-c, kind="stable")
        n = int(np.searchsorted(np.cumsum(c[order]), 0.5 * c.sum())) + 1
        hot |= {m["experts"][f"{layer}_{e}"]["shard"] for e in order[:n]}
    assert 2 <= len(hot) < 24
    ids = [5, 77, 300]
    want = Engine.load(pkg).logits(ids)
    rec = Recorder()
    with serving(app_with(rec, pkg)) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(pkg), {"expertsOnDemand": True, "hotExperts": 0.5}])
        at_load = {Path(p).name for p, _ in rec.shard_requests()}
        got = browser_logits(page, ids)
    dense = {s["file"] for s in m["shards"] if s["kind"] == "dense"}
    assert at_load == dense | hot
    assert_matches_native(got, want)


def test_chat_completions_create():
    """engine.chat.completions.create in OpenAI's shape: the non-streamed answer, the streamed chunks
    (role first, finish_reason last) and generate() give the same text at temperature 0; usage counts the
    tokens; max_tokens ends with "length"; a field it does not support is refused by name."""
    messages = [{"role": "user", "content": "Speak, Romeo."}]
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [manifest_url(DEMO)])
        r = page.evaluate("""async ([messages]) => {
          const e = window.engine;
          const whole = await e.chat.completions.create({messages, max_tokens: 12, temperature: 0});
          const chunks = [];
          for await (const c of await e.chat.completions.create({messages, max_tokens: 12, temperature: 0, stream: true}))
            chunks.push(c);
          let text = '';
          for await (const t of e.generate(messages, {maxNewTokens: 12, temperature: 0})) text += t.text;
          let refused = null;
          try { await e.chat.completions.create({messages, logprobs: true}); } catch (err) { refused = err.message; }
          return {whole, chunks, text, refused};
        }""", [messages])
    whole, chunks = r["whole"], r["chunks"]
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    assert whole["choices"][0]["message"]["content"] == r["text"] != ""
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 12
    assert whole["usage"]["total_tokens"] == whole["usage"]["prompt_tokens"] + 12
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == r["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert r["refused"] == "unsupported chat completion fields: logprobs"


def test_opfs_budget_smaller_than_the_model(tmp_path):
    """expertsOnDemand with an OPFS budget of the dense shards and three experts (and GPU room for four,
    no memory tier): least recently used expert shards leave OPFS as new ones arrive, so the model's
    folder never holds more than the budget, experts needed again are fetched again, and the logits are
    the native engine's; a budget too small
    for the dense shards and one expert is a QuotaError before anything is stored (with storage "opfs"; by
    default the model then runs from memory, test_a_model_larger_than_the_quota_runs_from_memory)."""
    config = mixtral(num_local_experts=12, num_experts_per_tok=2, num_hidden_layers=2)
    pkg = convert(save_checkpoint(MixtralForCausalLM, config, tmp_path / "ckpt"), tmp_path / "budget",
                  dtype="f16", progress=False)
    m = json.loads((pkg / "manifest.json").read_text())
    dense = sum(e["size"] for e in m["shards"] if e["kind"] != "expert")
    expert = max(e["size"] for e in m["shards"] if e["kind"] == "expert")
    ids = [5, 77, 300, 12, 9, 250]
    want = Engine.load(pkg).logits(ids)
    rec = Recorder()
    with serving(app_with(rec, pkg)) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        err = page.evaluate("""async ([m, budget]) => {
          try { await (await import('/web/dist/standalone/webmoe.js')).load(m, {expertsOnDemand: true, opfsBudgetBytes: budget,
                                                                 storage: 'opfs'}); }
          catch (e) { return e.message; }
        }""", [manifest_url(pkg), dense])
        assert err.startswith("an OPFS budget of"), err
        page.evaluate(LOAD, [manifest_url(pkg), {"expertsOnDemand": True, "opfsBudgetBytes": dense + 3 * expert,
                                                 "memoryCacheBytes": 0, "expertCacheBytes": 4 * expert}])
        got = browser_logits(page, ids)
        again = browser_logits(page, ids)
        cached = page.evaluate("async () => (await import('/web/dist/standalone/webmoe.js')).listCached()")
        tiers = page.evaluate("async () => (await window.engine.expertStats()).tiers")
    fetched = [Path(p).name for p, _ in rec.shard_requests() if "expert-" in p]
    shards = {s["file"]: s["size"] for s in m["shards"]}
    sent = [Path(p).name for p, _ in rec.shard_requests()] + [f for f in shards if not f.endswith(".bin")]
    net = tiers["network"]          # every shard the server sent (tokenizer files once), as the page counted:
    # fetched whole, or (a prediction the router did not choose) dropped under way, perhaps before it was sent
    assert net["fetches"] <= len(sent) <= net["fetches"] + net["dropped"] and net["failed_sources"] == 0
    assert 0 <= sum(shards[f] for f in sent) - net["bytes"] <= net["dropped"] * expert
    # each stored expert beyond the three that fit evicted one (a dropped transfer stores nothing)
    assert tiers["opfs"]["evictions"] >= len(fetched) - 3 - net["dropped"] and tiers["opfs"]["reads"] >= 0
    assert len(set(fetched)) > 3 and len(fetched) > len(set(fetched))      # more than fit; some fetched again
    assert len(cached) == 1 and cached[0]["bytes"] <= dense + 3 * expert + 4096      # + state.json
    for logits in (got, again):
        assert_matches_native(logits, want)


def test_the_link_serves_needed_shards_before_those_fetched_ahead():
    """web/transfers.js, the queue every shard transfer waits in: with two at once, transfers ahead of need
    (predictions, background filling) wait behind needed ones whatever their arrival order; a waiting one
    that becomes needed moves up; one dropped before it starts rejects with Dropped, one dropped under way
    has its fetch aborted (Dropped as the reason); a needed transfer is never dropped."""
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        r = page.evaluate("""async () => {
          const { TransferQueue } = await import('/web/transfers.js');
          const q = new TransferQueue(2), order = [], links = {};
          const go = (f, ahead) => q.enter(f, ahead).then((l) => { order.push(f); links[f] = l; },
                                                          (e) => order.push(`${f} ${e.name}`));
          const tick = () => new Promise((r) => setTimeout(r, 0));
          go('a', false); go('x', true); go('p1', true); go('p2', true); go('n1', false); go('p3', true);
          await tick();                                  // a and x under way
          q.need('p3'); q.drop('p2'); q.drop('n1'); q.drop('a'); q.drop('x');
          await tick();
          const aborted = {a: links.a.signal.aborted, x: links.x.signal.reason?.name};
          for (const f of ['a', 'x', 'n1']) { links[f].done(); await tick(); }
          return {order, aborted};
        }""")
    assert r["order"] == ["a", "x", "p2 Dropped", "n1", "p3", "p1"]
    assert r["aborted"] == {"a": False, "x": "Dropped"}


def test_the_preprocessor_twins_agree():
    """web/shaders.js keeps and refuses what engine/shaders.py does (tests/shader_cases.py, whose expected
    texts test_shaders.py checks natively), with the same messages."""
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        got = page.evaluate("""async ([files, cases]) => {
          const { ShaderLibrary } = await import('/web/shaders.js');
          const lib = new ShaderLibrary(new URL('/shaders/', location.href));
          for (const [name, text] of Object.entries(files)) lib.files.set(name, Promise.resolve(text));
          const out = [];
          for (const [kernel, defines, consts] of cases) {
            try { out.push(await lib.preprocess(kernel, new Set(defines), consts)); }
            catch (e) { out.push(`${e.name}: ${e.message}`); }
          }
          return out;
        }""", [SHADER_FILES, [c[:3] for c in SHADER_CASES]])
    expected = [e.replace("error: ", "ShaderError: ", 1) for *_, e in SHADER_CASES]
    assert got == expected


def test_engine_options_are_checked_once_by_name():
    """Both runtimes take their options as one object checked before anything loads: an unknown name is a
    TypeError naming it, a bad value an OptionError naming the field (web/options.js, engine/options.py);
    pinned experts the model lacks are refused with the same message."""
    from webmoe.engine.errors import ExpertCacheError, OptionError
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        got = page.evaluate("""async (manifest) => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          const out = [];
          for (const o of [{maxSeqlen: 5}, {chunkTokens: 0}, {storage: 'disk'}, {pinnedExperts: [[0]]}]) {
            try { await webmoe.load('/models/none/manifest.json', o); out.push(null); }
            catch (e) { out.push(`${e.name}: ${e.message}`); }
          }
          try { await webmoe.load(manifest, {pinnedExperts: [[3, 1], [0, 99]]}); out.push(null); }
          catch (e) { out.push(`${e.name}: ${e.message}`); }
          return out;
        }""", manifest_url(DEMO))
    with pytest.raises(ExpertCacheError) as native:
        Engine.load(DEMO, pinned_experts=[(3, 1), (0, 99)])
    assert got.pop() == f"ExpertCacheError: {native.value}"
    assert got == ["TypeError: no engine option maxSeqlen", "OptionError: chunkTokens must be an integer of at least 1, not 0",
                   "OptionError: storage must be one of auto, opfs, memory",
                   "OptionError: pinnedExperts must be [layer, expert] pairs of non-negative integers"]
    with pytest.raises(TypeError, match="no engine option max_seqlen"):
        Engine.load(DEMO, max_seqlen=5)
    with pytest.raises(OptionError, match="chunk_tokens must be an integer of at least 1, not 0"):
        Engine.load(DEMO, chunk_tokens=0)
    with pytest.raises(OptionError, match="pinned_experts must be"):
        Engine.load(DEMO, pinned_experts=[(0,)])


def test_a_failing_mirror_is_skipped(tmp_path, packages):
    """The package names two mirrors; its own server refuses every shard and the first mirror serves wrong
    bytes: each shard is tried there, refused or found to fail its sha256, and comes from the second
    mirror; the logits are the native engine's."""
    src = packages["gqa-top2-f32"]
    copies = {k: shutil.copytree(src, tmp_path / k / src.name) for k in ("own", "bad", "good")}
    refusing, bad, good = Recorder(refuse=True), Recorder(corrupt=True), Recorder()
    ids = [3, 14, 15, 92]
    want = Engine.load(src).logits(ids)
    with serving(app_with(bad, copies["bad"])) as bad_url, serving(app_with(good, copies["good"])) as good_url:
        m = json.loads((src / "manifest.json").read_text())
        m["mirrors"] = [f"{bad_url}/models/{src.name}/", f"{good_url}/models/{src.name}/"]
        (copies["own"] / "manifest.json").write_bytes(seal_manifest(m))
        with serving(app_with(refusing, copies["own"])) as url, browser() as ctx:
            page = open_page(ctx, url + "/")
            page.evaluate(LOAD, [manifest_url(copies["own"])])
            got = browser_logits(page, ids)
    shards = sorted(s["file"] for s in m["shards"] if s["file"].endswith(".bin"))
    assert refusing.shard_requests() and bad.shard_requests()
    assert sorted(Path(p).name for p, _ in good.shard_requests()) == shards
    assert_matches_native(got, want)


def test_quota_too_small_gives_a_clear_message(packages):
    """storage "opfs": a quota below the model is a QuotaError before it downloads, and a load with the
    quota back completes from what is there."""
    pkg = packages["gqa-top2-f32"]
    rec = Recorder()
    with serving(app_with(rec, pkg)) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        cdp = ctx.new_cdp_session(page)
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": url, "quotaSize": 200_000})
        err = page.evaluate("""async ([m]) => {
          try { await (await import('/web/dist/standalone/webmoe.js')).load(m, {storage: 'opfs'}); return null; }
          catch (e) { return e.message; }
        }""", [manifest_url(pkg)])
        assert err and err.startswith("Not enough browser storage for this model"), err
        cached = page.evaluate("async () => (await import('/web/dist/standalone/webmoe.js')).listCached()")
        assert [c["complete"] for c in cached] == [False]
        # with the quota back, the same load completes from what is there
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": url})
        assert page.evaluate(LOAD, [manifest_url(pkg), {"storage": "opfs"}])["family"] == "mixtral"
        cached = page.evaluate("async () => (await import('/web/dist/standalone/webmoe.js')).listCached()")
        assert [c["complete"] for c in cached] == [True]


OPFS_BYTES = """async () => {
  const walk = async (dir) => {
    let n = 0;
    for await (const [, h] of dir.entries()) n += h.kind === 'file' ? (await h.getFile()).size : await walk(h);
    return n;
  };
  return walk(await navigator.storage.getDirectory());
}"""


def test_a_model_larger_than_the_quota_runs_from_memory(tmp_path):
    """Where the browser lets the site keep less than the model needs (here a quota of 20 kB, as a private
    window or a full disk gives), the default load (storage "auto") runs the model with every shard fetched
    into memory and verified, writes no more than the browser allowed, and says why in engine.ephemeral; the logits and
    greedy tokens are the native engine's. With experts on demand and an OPFS budget below the dense
    shards and one expert, the same, decided before anything is written: the dense shards at load, then
    each routed expert when asked for, and an expert needed again after it left the in-memory cache is
    fetched again."""
    config = mixtral(num_local_experts=12, num_experts_per_tok=2, num_hidden_layers=2)
    pkg = convert(save_checkpoint(MixtralForCausalLM, config, tmp_path / "ckpt"), tmp_path / "private",
                  dtype="f16", progress=False)
    m = json.loads((pkg / "manifest.json").read_text())
    dense = {e["file"] for e in m["shards"] if e["kind"] == "dense"}
    expert = max(e["size"] for e in m["shards"] if e["kind"] == "expert")
    ids = [5, 77, 300, 12, 9, 250]
    native = Engine.load(pkg)
    want = native.logits(ids)
    want_tokens = [t.id for t in native.generate(ids, max_new_tokens=8, temperature=0)]
    rec = Recorder()
    with serving(app_with(rec, pkg)) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        ctx.new_cdp_session(page).send("Storage.overrideQuotaForOrigin", {"origin": url, "quotaSize": 20_000})
        info = page.evaluate(LOAD, [manifest_url(pkg)])
        # (the quota is met by the estimate or, where the estimate does not show the lowered quota, by a write)
        assert re.match("this site may store|the browser refused to store", info["ephemeral"]), info
        got = browser_logits(page, ids)
        tokens = page.evaluate(GREEDY, [ids, 8])
        stored = page.evaluate(OPFS_BYTES)        # what the browser took before it refused (state.json, a shard)
        assert stored < sum(e["size"] for e in m["shards"]) // 2
        whole = [Path(p).name for p, _ in rec.shard_requests()]
        # experts on demand, an OPFS budget too small for the dense shards and one expert, no memory tier
        # and GPU room for four experts: every routed expert comes from the network, some more than once
        page.close()
        page = open_page(ctx, url + "/")
        info = page.evaluate(LOAD, [manifest_url(pkg), {"expertsOnDemand": True, "opfsBudgetBytes": 1000,
                                                        "memoryCacheBytes": 0, "expertCacheBytes": 4 * expert}])
        assert info["ephemeral"].startswith("an OPFS budget of"), info
        at_load = {Path(p).name for p, _ in rec.shard_requests()[len(whole):]}
        paged = browser_logits(page, ids)
        again = browser_logits(page, ids)
        assert page.evaluate(OPFS_BYTES) == stored                 # decided before a byte was written
        fetched = [Path(p).name for p, _ in rec.shard_requests()[len(whole):] if "expert-" in p]
    bins = {s["file"] for s in m["shards"] if s["file"].endswith(".bin")}
    assert set(whole) == bins and len(whole) <= len(bins) + 4    # downloads under way when refused: fetched again
    assert at_load == dense
    assert len(fetched) > len(set(fetched)) > 4
    for logits in (got, paged, again):
        assert_matches_native(logits, want)
    assert tokens == want_tokens


def test_chat_page_in_a_private_window():
    """A private window (a context with no profile on disk, its storage in memory) whose quota is too small
    for the model (Chromium grants a private window here 4 GiB, less than a full-size model; the demo needs
    a quota lowered to 1 MB to be too large) loads the demo from the chat page, says that nothing is kept
    between visits, and chats."""
    with serving(create_app([DEMO])) as url, private_window() as ctx:
        page = open_page(ctx, url + "/")
        ctx.new_cdp_session(page).send("Storage.overrideQuotaForOrigin", {"origin": url, "quotaSize": 1_000_000})
        page.goto(url + "/?autoload")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        note = page.inner_text("#notice")
        assert "Nothing of" in note and "next visit downloads it again" in note, note
        page.click("#settings summary")
        page.fill("#max-tokens", "4")
        page.fill("#prompt", "Good morrow")
        page.click("#send")
        page.wait_for_selector("#send:not([disabled])", timeout=120_000)
        assert page.inner_text(".msg.assistant").strip()


def test_chat_page_streams_tokens():
    pkg = DEMO
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with serving(create_app([pkg])) as url, browser() as ctx:
        page = open_page(ctx, url + "/?autoload")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        assert "swiftshader" in page.inner_text("#status").lower()
        page.click("#settings summary")
        page.fill("#max-tokens", "6")
        page.fill("#prompt", "Good morrow, how are you?")
        # every text the reply's bubble shows, and when: streamed, it grows token by token while Send is
        # still disabled; a page that wrote the whole reply at the end would show one text
        page.evaluate("""() => {
          window.shown = [];
          new MutationObserver(() => {
            const b = document.querySelector('.msg.assistant');
            if (b && b.textContent && b.textContent !== window.shown.at(-1)?.text) {
              window.shown.push({text: b.textContent, busy: document.querySelector('#send').disabled});
            }
          }).observe(document.querySelector('#log'), {subtree: true, childList: true, characterData: true});
        }""")
        page.click("#send")
        page.wait_for_selector(".msg.assistant")
        page.wait_for_selector("#send:not([disabled])", timeout=120_000)
        reply = page.inner_text(".msg.assistant")
        assert reply.strip()
        shown = page.evaluate("window.shown")
        assert len(shown) >= 3 and all(s["busy"] for s in shown), shown                 # several texts, mid-reply
        assert all(b["text"].startswith(a["text"]) for a, b in zip(shown, shown[1:])), shown   # each grows the last
        status = page.inner_text("#status")
        assert "tokens/s" in status and int(status.split()[0]) <= 6, status      # the Max tokens setting
        # the live expert heatmap: a header of expert numbers, one row per MoE layer, one cell per expert
        rows = page.locator("#heatmap tr")
        assert rows.count() == 5 and [rows.nth(i).locator("td").count() for i in range(1, 5)] == [8] * 4
        assert rows.first.inner_text().split() == [str(e) for e in range(8)]
        assert "Rows: MoE layers" in page.inner_text("aside .legend")
        page.wait_for_function("document.querySelector('#cache-stats').textContent.includes('lookups')")
        page.screenshot(path=str(SCREENSHOTS / "chat.png"))
        assert page.inner_text("#cached").count("MiB") == 1


class Gate:
    """aiohttp middleware that holds the responses for the named files until the test releases them."""

    def __init__(self, *names: str):
        self.held: dict[str, threading.Event] = {}
        self.hold(*names)
        self.middleware = web.middleware(lambda request, handler: self.handle(request, handler))

    def hold(self, *names: str):
        self.held.update((n, threading.Event()) for n in names)

    async def handle(self, request, handler):
        event = self.held.get(request.path.rsplit("/", 1)[-1])
        while event is not None and not event.is_set():
            await asyncio.sleep(0.05)
        return await handler(request)

    def release(self, name: str):
        self.held[name].set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):      # whatever happened, nothing stays held (the server can stop)
        for event in self.held.values():
            event.set()


def stage_text(page, stage):
    return page.inner_text(f"#stages li[data-stage={stage}]")


def test_page_says_what_to_do_and_shows_each_load_stage(packages):
    """A first visit says to press Load (naming what downloads now and in all), or to choose a model when
    there are several. Load shows each stage with its progress: the server holds the dense shard, so the
    page is caught downloading while the kernels compile (screenshot), then with the download and upload
    done (screenshot); every text the compile stage showed is recorded, and one of them counts kernels
    still compiling while the prompt is disabled (the kernels are inside the build: no request of theirs
    can be held); the next visit loads the
    model by itself, and a dense shard corrupted in OPFS is fetched again while uploading (screenshot)."""
    pkg = packages["gqa-top2-f32"]
    m = json.loads((pkg / "manifest.json").read_text())
    dense = next(s["file"] for s in m["shards"] if s["kind"] == "dense")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    gate = Gate(dense)
    with serving(app_with(gate, pkg)) as url, browser() as ctx, gate:
        page = open_page(ctx, url + "/")
        page.wait_for_selector("#notice:not([hidden])")
        assert page.inner_text("#notice").startswith(f"Press Load to chat with {pkg.name}: it downloads the dense weights (")
        page.evaluate("""() => {
          window.compileTexts = [];
          new MutationObserver(() => {
            const li = document.querySelector('#stages li[data-stage=compile]');
            if (li) window.compileTexts.push([li.textContent, document.getElementById('prompt').disabled]);
          }).observe(document.getElementById('stages'), {subtree: true, childList: true, characterData: true});
        }""")
        page.click("#load")
        page.wait_for_selector("#stages li[data-stage=compile]")
        page.wait_for_function("document.querySelector('#stages li[data-stage=download]')?.textContent"
                               ".includes('(1 shard to go)')")       # the held one; the tokenizer files are in
        page.screenshot(path=str(SCREENSHOTS / "stage-download.png"))
        assert re.fullmatch(r"Downloading [\d.]+ MiB / [\d.]+ MiB \(1 shard to go\); \d+ experts come when the "
                            r"router first asks for them", stage_text(page, "download")), stage_text(page, "download")
        assert re.fullmatch(r"Compiling kernels \d+ / \d+", stage_text(page, "compile"))
        gate.release(dense)
        page.wait_for_function("document.querySelector('#stages li[data-stage=upload]')?.textContent"
                               ".startsWith('Uploaded')")
        page.screenshot(path=str(SCREENSHOTS / "stage-compile.png"))
        assert stage_text(page, "download").startswith("Downloaded ")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        counts = [(tuple(map(int, m.groups())), disabled) for text, disabled in page.evaluate("window.compileTexts")
                  if (m := re.fullmatch(r"Compiling kernels (\d+) / (\d+)", text))]
        assert any(done < total and disabled for (done, total), disabled in counts), counts
        assert page.is_hidden("#progress")
        # the next visit: remembered and in OPFS, it loads by itself; its dense shard, corrupted in OPFS,
        # fails its hash when read for the upload and is fetched again (held by the server meanwhile)
        page.evaluate("""async ([file]) => {
          const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('webmoe');
          for await (const [, dir] of root.entries()) {
            const w = await (await dir.getFileHandle(file)).createWritable({keepExistingData: true});
            await w.write({type: 'write', position: 0, data: new Uint8Array(16).fill(7)});
            await w.close();
          }
        }""", [dense])
        page.close()
        gate.hold(dense)
        page = open_page(ctx, url + "/")
        page.wait_for_selector("#stages li[data-stage=upload]")
        page.screenshot(path=str(SCREENSHOTS / "stage-upload.png"))
        assert stage_text(page, "download").startswith("Downloaded ")
        assert re.fullmatch(r"Uploading to the GPU 0\.0 MiB / [\d.]+ MiB", stage_text(page, "upload"))
        gate.release(dense)
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
    with serving(create_app([pkg, packages["odd-sizes-top3-f16"]])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.wait_for_selector("#notice:not([hidden])")
        assert page.inner_text("#notice").startswith("Choose a model above and press Load")
        assert page.is_disabled("#prompt")


def ask(page, text):
    """Sends a message on the chat page and waits for the whole reply; returns it."""
    n = page.locator(".msg.assistant").count()
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length > {n}")
    page.wait_for_selector("#send:not([disabled])", timeout=120_000)
    return page.locator(".msg.assistant").nth(n).inner_text()


def test_page_recovers_from_a_lost_gpu_device():
    """Chromium's GPU process crashes after a reply (the DevTools command): the page says the device was
    lost, loads the model again by itself (its dense shard and the experts used so far from OPFS), and
    answers the next message."""
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/?autoload")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        page.click("#settings summary")
        page.fill("#max-tokens", "4")
        assert ask(page, "Good morrow").strip()
        ctx.new_cdp_session(page).send("Browser.crashGpuProcess")
        page.wait_for_function("document.querySelector('#notice').textContent.includes('loaded again')", timeout=120_000)
        text = page.inner_text("#notice")
        assert text.startswith("The GPU device was lost (") and "the conversation goes on" in text, text
        assert ask(page, "And you?").strip()
        assert page.locator(".msg.user").count() == 2


def test_page_layout_at_phone_width_and_as_the_sidebar_grows(packages):
    """On a desktop window the input box stays where it is while the sidebar grows (settings opened, the
    heatmap drawn); at 420 px every control is on screen."""
    with serving(create_app([packages["gqa-top2-f32"]])) as url, browser() as ctx:
        page = open_page(ctx, url + "/?autoload")
        page.set_viewport_size({"width": 1200, "height": 700})
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        before = page.locator("#prompt").bounding_box()
        page.click("#settings summary")
        page.fill("#max-tokens", "3")
        ask(page, "Hello")
        page.wait_for_selector("#heatmap table")
        assert page.locator("#prompt").bounding_box() == before
        page.set_viewport_size({"width": 420, "height": 800})
        for control in ("#model", "#load", "#prompt", "#send", "#stop"):
            box = page.locator(control).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 420 and box["y"] >= 0, (control, box)
        page.screenshot(path=str(SCREENSHOTS / "phone.png"), full_page=True)


def test_missing_module_gives_a_clear_message(packages):
    """With the runtime's worker module missing (served as 404), loading ends in a message that says what
    happened and what to do, instead of waiting forever."""
    @web.middleware
    async def no_worker(request, handler):
        if request.path.endswith("/worker.js"):
            raise web.HTTPNotFound()
        return await handler(request)
    app = create_app([packages["gqa-top2-f32"]])
    app.middlewares.append(no_worker)
    with serving(app) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.click("#load")
        page.wait_for_selector("#notice.error", timeout=60_000)
        text = page.inner_text("#notice")
    assert "worker could not start" in text and "worker.js is served beside webmoe.js" in text, text


def test_network_failure_gives_a_clear_message(packages):
    """A server that refuses every shard: after its retries the page says which shard could not be
    downloaded, from where, and what to do."""
    with serving(app_with(Recorder(refuse=True), packages["gqa-top2-f32"])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.click("#load")
        page.wait_for_selector("#notice.error", timeout=60_000)
        text = page.inner_text("#notice")
    assert re.match(r"could not download \S+\.bin from 127\.0\.0\.1:\d+ \(\S+\.bin: HTTP 503\)\. Check the network "
                    r"connection and load again: what has arrived is kept", text), text


def test_no_webgpu_gives_a_clear_message(packages, tmp_path):
    from browser import CHROMIUM, playwright
    with serving(create_app([packages["gqa-top2-f32"]])) as url:
        b = playwright().chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                                     "--disable-features=WebGPU,Vulkan", "--disable-component-update"])
        page = b.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#notice:not([hidden])")
        assert "WebGPU is not available" in page.inner_text("#notice")
        b.close()


def test_sampled_tokens_and_statistics_match_native():
    """The same prompt, seed, temperature and top-p sample the same tokens natively and in Chromium (one
    seeded generator, SplitMix64, in both); the expert cache statistics have the same shape; a package of
    the previous format version is refused with the same message as natively."""
    native = Engine.load(DEMO, observe_routing=True)
    settings = dict(max_new_tokens=24, temperature=0.8, top_p=0.9, seed=1234)
    prompt = "JULIET. O Romeo, Romeo!"
    expected = [t.id for t in native.generate(prompt, **settings)]
    old = (Path(__file__).parent / "data" / "format7-manifest.json").read_text()
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate("""async ([manifest]) => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          window.engine = await webmoe.load(manifest, {observeRouting: true});
        }""", [manifest_url(DEMO)])
        got = page.evaluate("""async ([p, s]) => {
          const out = [];
          for await (const t of window.engine.generate(p, {maxNewTokens: s.max_new_tokens, temperature: s.temperature,
                                                           topP: s.top_p, seed: s.seed})) out.push(t.id);
          return out;
        }""", [prompt, settings])
        assert got == expected
        stats = page.evaluate("async () => window.engine.expertStats()")
        want = json.loads(json.dumps(native.expert_stats()))
        assert sorted(stats) == sorted(want)
        assert sorted(stats["layers"]) == sorted(want["layers"])
        assert sorted(stats["total"]) == sorted(want["total"])
        page.route("**/old/manifest.json", lambda route: route.fulfill(body=old, content_type="application/json"))
        err = page.evaluate("""async () => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          try { await webmoe.load('/old/manifest.json'); return null; } catch (e) { return [e.name, e.message]; }
        }""")
    from webmoe.format.manifest import PackageError, read_manifest
    with pytest.raises(PackageError) as native_err:
        read_manifest(old.encode())
    assert err == ["PackageError", str(native_err.value)]


def test_browser_checks_the_manifest_digest_and_schema():
    """The page refuses a manifest with one changed byte (its own sha256) with the native message, a sealed
    but malformed one (a boolean as a size) by schemas/manifest.schema.json, and one of a newer format
    version (the page reads its own from the served schema) or with a step reading a variable the plan does
    not declare, with the native messages; the right one loads
    only under its pinned digest."""
    from webmoe.format.manifest import PackageError, read_manifest, seal_manifest
    raw = (DEMO / "manifest.json").read_bytes()
    changed = raw.replace(b'"hidden_size": 192', b'"hidden_size": 193')
    m = json.loads(raw)
    m["tensors"]["model.norm.weight"]["size"] = True
    sealed_bad = seal_manifest(m)
    digest = m["manifest_sha256"]
    m = json.loads(raw)
    m["experts"]["0_1"]["shard"] = m["experts"]["0_0"]["shard"]       # schema-valid, a wrong cross-reference
    crossed = seal_manifest(m)
    m = json.loads(raw)
    m["config"]["num_layers"] = 99                                    # the config stating what the plan does not
    misstated = seal_manifest(m)
    m = json.loads(raw)
    m["format_version"] += 1                                          # the version read from the served schema
    newer = seal_manifest(m)
    m = json.loads(raw)
    m["plan"]["steps"][3]["dispatch"][2] = "pos"                     # a variable format 7 removed
    undeclared = seal_manifest(m)
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.route("**/changed/manifest.json", lambda route: route.fulfill(body=changed, content_type="application/json"))
        page.route("**/sealed/manifest.json", lambda route: route.fulfill(body=sealed_bad, content_type="application/json"))
        page.route("**/crossed/manifest.json", lambda route: route.fulfill(body=crossed, content_type="application/json"))
        page.route("**/misstated/manifest.json", lambda route: route.fulfill(body=misstated,
                                                                             content_type="application/json"))
        page.route("**/newer/manifest.json", lambda route: route.fulfill(body=newer, content_type="application/json"))
        page.route("**/undeclared/manifest.json", lambda route: route.fulfill(body=undeclared,
                                                                              content_type="application/json"))
        errors = page.evaluate("""async ([good, digest]) => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          const out = [];
          for (const [u, d] of [['/changed/manifest.json', null], ['/sealed/manifest.json', null], [good, '0'.repeat(64)],
                                ['/crossed/manifest.json', null], ['/misstated/manifest.json', null],
                                ['/newer/manifest.json', null], ['/undeclared/manifest.json', null], [good, digest]]) {
            try { (await webmoe.load(u, {digest: d})).unload(); out.push(null); } catch (e) { out.push([e.name, e.message]); }
          }
          return out;
        }""", [manifest_url(DEMO), digest])
    with pytest.raises(PackageError) as native:
        read_manifest(changed)
    assert errors[0] == ["PackageError", str(native.value)]
    assert errors[1][0] == "PackageError" and errors[1][1].startswith("malformed manifest.json at tensors/model.norm.weight/size")
    assert errors[2] == ["PackageError", f"the package's manifest has sha256 {digest}, not the {'0' * 64} asked for"]
    with pytest.raises(PackageError) as native:
        read_manifest(crossed)
    assert errors[3] == ["PackageError", str(native.value)]
    with pytest.raises(PackageError, match="config.num_layers is 99, but the plan has 4") as native:
        read_manifest(misstated)
    assert errors[4] == ["PackageError", str(native.value)]
    with pytest.raises(PackageError, match="is newer than this webmoe") as native:
        read_manifest(newer)
    assert errors[5] == ["PackageError", str(native.value)]
    with pytest.raises(PackageError, match="uses pos, which the plan's variables do not declare") as native:
        read_manifest(undeclared)
    assert errors[6] == ["PackageError", str(native.value)]
    assert errors[7] is None                                          # its own digest pinned: it loads
    with pytest.raises(PackageError) as native:
        Engine.load(DEMO, digest="0" * 64)
    assert str(native.value) == errors[2][1]
    Engine.load(DEMO, digest=digest).close()
