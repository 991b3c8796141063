"""The browser runtime in headless Chromium (WebGPU on SwiftShader) against the native engine: every family
and weight format at normal and lowered binding limits, the demo model, sampled tokens and statistics, the
preprocessor, options, the manifest's digest and schema, chat.completions. Storage and downloads are in
test_browser_storage.py, the chat page in test_chat_page.py; helpers in browser.py."""
import json
from pathlib import Path

import pytest
from transformers import MixtralForCausalLM

from browser import LOAD, Recorder, app_with, browser, check_parity, manifest_url, open_page, packages, serving  # packages: a fixture
from shader_cases import CASES as SHADER_CASES, FILES as SHADER_FILES
from test_mixtral import CONFIGS
from webmoe.converter.convert import convert
from webmoe import Engine
from webmoe.serve.server import create_app
from tiny_models import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
SCREENSHOTS = ROOT / "out" / "screenshots"


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
    every weight format (the native kernels are checked against numpy's decoding in test_kernels.py and test_kernels_moe.py)."""
    url, ctx, pkgs = family_site
    page = open_page(ctx, url + "/")
    try:
        info = page.evaluate(LOAD, [manifest_url(pkgs[name])])
        assert info["family"] == ("mixtral" if name in MIXTRAL_PACKAGES else name.split("-")[0])
        assert "swiftshader" in info["adapter"].lower()
        check_parity(page, pkgs[name])
    finally:
        page.close()


@pytest.mark.parametrize("name", ["odd-sizes-top3-q4", "deepseek_v3", "gpt_oss-mxfp4"])
def test_the_gpu_plan_in_the_browser_matches_native(family_site, name):
    """SwiftShader is a fallback adapter, so Chromium runs the plan's "cpu" variant; asked for the plan's own
    (GPU) steps it gives the native engine's logits and tokens with the same steps."""
    url, ctx, pkgs = family_site
    page = open_page(ctx, url + "/")
    try:
        assert page.evaluate(LOAD, [manifest_url(pkgs[name])])["adapterClass"] == "cpu"
        page.evaluate("async () => window.engine.unload()")
        info = page.evaluate(LOAD, [manifest_url(pkgs[name]), {"adapterClass": "gpu"}])
        assert info["adapterClass"] == "gpu"
        check_parity(page, pkgs[name], native=Engine.load(pkgs[name], adapter_class="gpu"))
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


def test_browser_bench_bookkeeping(packages):
    """`webmoe bench --browser` (its bookkeeping, not its speed): one slot misses every lookup."""
    from webmoe.tools.bench_browser import bench_browser
    rows = bench_browser(packages["gqa-top2-f32"], tokens=3, runs=((1.0, False), (0.0, False)), repeats=1)
    assert [r["label"] for r in rows] == ["100%", "min (1 slot)"]
    assert rows[0]["bytes_per_token"] == 0 and rows[1]["slots"] == 1 and rows[1]["hit_rate"] == 0.0
    assert rows[1]["bytes_per_token"] > 0 and "swiftshader" in rows[0]["adapter"].lower()


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
          for (const o of [{maxSeqlen: 5}, {chunkTokens: 0}, {storage: 'disk'}, {pinnedExperts: [[0]]}, {adapterClass: 'npu'}]) {
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
                   "OptionError: pinnedExperts must be [layer, expert] pairs of non-negative integers",
                   "OptionError: adapterClass must be one of gpu, cpu, not npu"]
    with pytest.raises(TypeError, match="no engine option max_seqlen"):
        Engine.load(DEMO, max_seqlen=5)
    with pytest.raises(OptionError, match="chunk_tokens must be an integer of at least 1, not 0"):
        Engine.load(DEMO, chunk_tokens=0)
    with pytest.raises(OptionError, match="pinned_experts must be"):
        Engine.load(DEMO, pinned_experts=[(0,)])
    with pytest.raises(OptionError, match="adapter_class must be one of gpu, cpu, not 'npu'"):
        Engine.load(DEMO, adapter_class="npu")


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
    version (the page reads its own from the served schema), with a step (or a plan variant's step) reading a
    variable the plan does not declare or a variant of a step the plan does not have, with the native
    messages; the right one loads only under its pinned digest."""
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
    m = json.loads(raw)
    m["plan"]["variants"]["cpu"][str(len(m["plan"]["steps"]))] = {"consts": {"LANES": 16}}   # no such step
    beyond = seal_manifest(m)
    m = json.loads(raw)
    m["plan"]["variants"]["cpu"]["2"]["dispatch"] = [1, "pos", 1]     # the cpu steps read an undeclared variable
    variant_undeclared = seal_manifest(m)
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
        page.route("**/beyond/manifest.json", lambda route: route.fulfill(body=beyond, content_type="application/json"))
        page.route("**/variant/manifest.json", lambda route: route.fulfill(body=variant_undeclared,
                                                                           content_type="application/json"))
        errors = page.evaluate("""async ([good, digest]) => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          const out = [];
          for (const [u, d] of [['/changed/manifest.json', null], ['/sealed/manifest.json', null], [good, '0'.repeat(64)],
                                ['/crossed/manifest.json', null], ['/misstated/manifest.json', null],
                                ['/newer/manifest.json', null], ['/undeclared/manifest.json', null], [good, digest],
                                ['/beyond/manifest.json', null], ['/variant/manifest.json', null]]) {
            try { (await webmoe.load(u, {digest: d})).unload(); out.push(null); } catch (e) { out.push([e.name, e.message]); }
          }
          return out;
        }""", [manifest_url(DEMO), digest])
    # the page's message is the native reader's, for each manifest either refuses
    for i, raw, match in [(0, changed, None), (3, crossed, None), (4, misstated, "config.num_layers is 99, but the plan has 4"),
                          (5, newer, "is newer than this webmoe"),
                          (6, undeclared, "uses pos, which the plan's variables do not declare"),
                          (8, beyond, "variants.cpu changes a step the plan does not have"),
                          (9, variant_undeclared, "uses pos, which the plan's variables do not declare")]:
        with pytest.raises(PackageError, match=match) as native:
            read_manifest(raw)
        assert errors[i] == ["PackageError", str(native.value)], i
    assert errors[1][0] == "PackageError" and errors[1][1].startswith("malformed manifest.json at tensors/model.norm.weight/size")
    assert errors[2] == ["PackageError", f"the package's manifest has sha256 {digest}, not the {'0' * 64} asked for"]
    assert errors[7] is None                                          # its own digest pinned: it loads
    with pytest.raises(PackageError) as native:
        Engine.load(DEMO, digest="0" * 64)
    assert str(native.value) == errors[2][1]
    Engine.load(DEMO, digest=digest).close()
