"""A package is a static folder (issue 25): any HTTP host serves it as it is. In Chromium: a host with no
Range support that drops the link mid-shard (the download starts the shard again, whole), redirects (to
another origin), and Hub repositories by hf://ORG/REPO[@REVISION] from a host laid out as the Hub's
(tests/static_hosts.py: resolve URLs answered with a redirect to a CDN path), with env.remoteHost pointing
at it. Logits are the native engine's on the same package."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import MixtralForCausalLM

from browser import assert_matches_native, browser, open_page
from static_hosts import hub_host, static_host
from test_mixtral import mixtral
from tiny_models import save_checkpoint
from webmoe.converter.convert import convert
from webmoe.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
IDS = [5, 77, 300, 12, 9, 250]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hosts")
    config = mixtral(num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=2)
    return convert(save_checkpoint(MixtralForCausalLM, config, tmp / "ckpt"), tmp / "small-mixtral", dtype="f32",
                   progress=False)


@pytest.fixture(scope="module")
def page_site(tmp_path_factory):
    """A page on its own origin that has the standalone build (as a site that copied it would)."""
    site = tmp_path_factory.mktemp("site")
    (site / "web" / "dist").mkdir(parents=True)
    for f in ("webmoe.js", "worker.js"):
        (site / "web" / "dist" / f).write_bytes((ROOT / "web" / "dist" / "standalone" / f).read_bytes())
    (site / "index.html").write_text("<!doctype html><title>a site</title>")
    return site


LOAD_AND_LOGITS = """async ([source, ids, remoteHost, options, ownWorker]) => {
  const webmoe = await import('/web/dist/webmoe.js');
  if (remoteHost) webmoe.env.remoteHost = remoteHost;
  try {
    // an app's own worker: a module worker whose script is the package's worker module
    const worker = ownWorker ? (window.appWorker = new Worker('/web/dist/worker.js', {type: 'module'})) : undefined;
    const engine = await webmoe.load(source, {...(options || {}), worker});
    const logits = Array.from(await engine.logits(ids));
    const out = {family: engine.family, logits};
    await engine.unload();
    return out;
  } catch (e) { return {error: `${e.name} ${e.code}: ${e.message}`}; }
}"""


def check(r: dict, pkg: Path):
    assert "error" not in r, r["error"]
    want = Engine.load(pkg).logits(IDS)
    got = np.array(r["logits"], np.float32).reshape(len(IDS), -1)
    assert_matches_native(got, want)


def test_a_host_without_range_that_drops_the_link(page_site, small):
    """Every shard's first transfer stops halfway; the host ignores Range and answers the retry with the
    whole file: each shard is fetched twice (the retry asks for the rest), written from the start, verified."""
    log, shards = [], {e["file"] for e in json.loads((small / "manifest.json").read_text())["shards"]}
    cut = {f for f in shards if f.endswith(".bin")}
    cut_at_start = set(cut)
    with static_host(page_site) as site, static_host(small.parent, cors=True, log=log, cut=cut) as cdn, \
            browser() as ctx:
        page = open_page(ctx, site + "/")
        r = page.evaluate(LOAD_AND_LOGITS, [f"{cdn}/{small.name}/", IDS, None, {"storage": "opfs"}])
    check(r, small)
    for f in cut_at_start:
        gets = [rng for method, path, rng in log if method == "GET" and path.endswith("/" + f)]
        assert len(gets) == 2, (f, gets)
        # the retry asks for the rest (Range), or for the whole file where a Range request failed at the
        # network level (another origin refusing the header)
        assert gets[0] is None and (gets[1] is None or gets[1].startswith("bytes=")), (f, gets)


def test_redirects_to_another_origin_are_followed(page_site):
    log = []
    with static_host(page_site) as site, static_host(DEMO.parent, cors=True, log=log) as cdn, \
            static_host(DEMO.parent, cors=True, redirect_to=cdn + "/") as mirror, browser() as ctx:
        page = open_page(ctx, site + "/")
        r = page.evaluate(LOAD_AND_LOGITS, [f"{mirror}/moved/{DEMO.name}/manifest.json", IDS, None, None])
    check(r, DEMO)
    arrived = {path for _, path, _ in log}                                            # by the redirect
    shards = {e["file"] for e in json.loads((DEMO / "manifest.json").read_text())["shards"]}
    assert {f"/{DEMO.name}/{f}" for f in shards | {"manifest.json"}} <= arrived


def test_hub_repositories_by_revision(page_site, small):
    """hf://ORG/REPO (main) and @REVISION, from the Hub-like host env.remoteHost names; a repository the
    host lacks is a PackageError saying what was asked."""
    log = []
    repos = {"webmoe/shakespeare-moe": {"main": DEMO, "small": small}}
    with static_host(page_site) as site, hub_host(repos, log) as hub, browser() as ctx:
        page = open_page(ctx, site + "/")
        main = page.evaluate(LOAD_AND_LOGITS, ["hf://webmoe/shakespeare-moe", IDS, hub + "/", None])
        rev = page.evaluate(LOAD_AND_LOGITS, ["hf://webmoe/shakespeare-moe@small", IDS, hub + "/", None])
        missing = page.evaluate(LOAD_AND_LOGITS, ["hf://webmoe/nothing-here", IDS, hub + "/", None])
        bad = page.evaluate(LOAD_AND_LOGITS, ["hf://not a repo", IDS, hub + "/", None])
    check(main, DEMO)
    check(rev, small)
    assert main["family"] != rev["family"] or main["logits"] != rev["logits"]
    assert any(p == "/webmoe/shakespeare-moe/resolve/small/manifest.json" for _, p, _ in log)
    assert missing["error"].startswith("PackageError package_error: manifest ") and "HTTP 404" in missing["error"]
    assert bad["error"].startswith("TypeError undefined: not a Hub repository: hf://not a repo")


def test_an_app_owned_worker(page_site):
    """load(source, {worker}) runs the engine in the app's worker (the page's module starts none of its own),
    and listCached({worker}) asks that worker."""
    with static_host(page_site) as site, static_host(DEMO.parent, cors=True) as cdn, browser() as ctx:
        page = open_page(ctx, site + "/")
        r = page.evaluate(LOAD_AND_LOGITS, [f"{cdn}/{DEMO.name}/", IDS, None, {"storage": "opfs"}, True])
        cached = page.evaluate("""async () => (await import('/web/dist/webmoe.js')).listCached({worker: window.appWorker})""")
        workers = page.evaluate("() => performance.getEntriesByType('resource').filter((e) => e.name.endsWith('worker.js')).length")
    check(r, DEMO)
    assert [c["complete"] for c in cached] == [True]
    assert workers == 1                                 # the app's, not a second one of webmoe's
