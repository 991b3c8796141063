"""The browser engine's lifecycle as an app uses it (web/webmoe.js, web/loader.js): unload() frees the model
(later calls fail with a clear error, the device-lost callback stays silent, and loading again gives the same
logits); load() asks the browser to persist its storage before the download; shard downloads run in
parallel but never more than their bound (4) at once."""
import asyncio
from pathlib import Path

import numpy as np
from aiohttp import web

from browser import LOAD, LOGITS, browser, open_page, serving
from webmoe.serve.server import create_app

DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
MANIFEST = f"/models/{DEMO.name}/manifest.json"
IDS = [5, 9, 30, 7]


def test_unload_frees_the_model_and_a_new_load_works():
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        r = page.evaluate("""async ([manifest, ids]) => {
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          let lost = null;
          const engine = await webmoe.load(manifest, {onDeviceLost: (m) => { lost = m; }});
          const before = Array.from(await engine.logits(ids));
          await engine.unload();
          const errors = [];
          for (const call of [() => engine.logits(ids), () => engine.generate(ids, {maxNewTokens: 2}).next(),
                              () => engine.expertStats()]) {
            try { await call(); errors.push(null); } catch (e) { errors.push(e.message); }
          }
          await new Promise((r) => setTimeout(r, 500));
          const again = await webmoe.load(manifest);
          const after = Array.from(await again.logits(ids));
          return {before, after, errors, lost};
        }""", [MANIFEST, IDS])
    assert r["errors"] == ["this engine is not loaded in the worker"] * 3
    assert r["lost"] is None                           # unload destroys the device; that is no loss to report
    assert np.array_equal(np.array(r["before"]), np.array(r["after"]))


def test_load_asks_the_browser_to_persist_storage_before_downloading():
    """Only a page may ask (StorageManager.persist is not exposed in workers, where the loader ran its
    request, never made: this test found it); load() asks once, before the first byte, unless the model is
    to live in memory only."""
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        r = page.evaluate("""async (manifest) => {
          const events = [];
          const persist = StorageManager.prototype.persist;
          StorageManager.prototype.persist = function () { events.push('persist'); return persist.call(this); };
          const webmoe = await import('/web/dist/standalone/webmoe.js');
          const onProgress = (p) => {
            if (p.stage === 'download' && p.loaded > 0 && !events.includes('download')) events.push('download');
          };
          await webmoe.load(manifest, {onProgress});
          const first = events.slice();
          await webmoe.load(manifest, {storage: 'memory'});
          return {first, all: events};
        }""", MANIFEST)
    assert r["first"][:2] == ["persist", "download"] and r["first"].count("persist") == 1
    assert r["all"].count("persist") == 1                   # not for a model kept in memory only


def test_shard_downloads_are_parallel_and_bounded():
    """Each shard's response is held for 150 ms: the loader keeps several transfers going at once, and never
    more than four."""
    state = {"now": 0, "most": 0, "shards": 0}

    @web.middleware
    async def count(request, handler):
        if not request.path.endswith(".bin"):
            return await handler(request)
        state["now"] += 1
        state["shards"] += 1
        state["most"] = max(state["most"], state["now"])
        try:
            await asyncio.sleep(0.15)
            return await handler(request)
        finally:
            state["now"] -= 1

    app = create_app([DEMO])
    app.middlewares.append(count)
    with serving(app) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.evaluate(LOAD, [MANIFEST, {"storage": "memory"}])
        got = page.evaluate(LOGITS, [IDS])
    shards = len([f for f in DEMO.iterdir() if f.suffix == ".bin"])
    assert state["shards"] == shards and len(got) == len(IDS) * 2048
    assert 2 <= state["most"] <= 4, state
