"""The browser's storage and downloads in headless Chromium: the OPFS cache (reuse, corruption, resume), experts
paged from OPFS and fetched on demand, hot experts, the OPFS budget, the link's order, mirrors, quotas and
models larger than the quota."""
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from transformers import MixtralForCausalLM

from browser import (GREEDY, LOAD, Recorder, app_with, assert_matches_native, browser, browser_logits,
                     corrupt_in_opfs, manifest_url, open_page, packages, serving)
from test_mixtral import mixtral
from webmoe.converter.convert import convert
from webmoe import Engine
from webmoe.format.manifest import seal_manifest
from webmoe.serve.server import create_app
from tiny_models import save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
SCREENSHOTS = ROOT / "out" / "screenshots"


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
        corrupt_in_opfs(page, "expert-L000-E002.bin", 64)
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


