"""`webmoe bench --browser`: the same budgets as engine/bench.py, measured in headless Chromium
(WebGPU on SwiftShader here) through the JS API. Needs the test extras (playwright) and Debian's
chromium."""
from __future__ import annotations

import statistics
from pathlib import Path

from .bench import RUNS, budgets, in_rounds
from webmoe.engine.package import Package
from webmoe.serve.server import create_app

PAGE_RUN = """async ([manifest, budget, prefetch, tokens]) => {
  const webmoe = await import('/web/dist/standalone/webmoe.js');
  const e = await webmoe.load(manifest, {expertCacheBytes: budget, prefetch});
  const vocab = e.config.vocab_size;
  const prompt = Array.from({length: 32}, (_, i) => (i * 7919 + 13) % vocab);
  let n = 0, t0 = 0, before = null;
  for await (const t of e.generate(prompt, {maxNewTokens: tokens + 1, temperature: 0})) {
    if (++n === 1) { before = await e.expertStats(); t0 = performance.now(); }
  }
  const seconds = (performance.now() - t0) / 1000, after = await e.expertStats();
  const d = (f) => after.total[f] - before.total[f];
  return {adapter: e.adapter, tokens: n - 1, seconds, slots: after.slots, lookups: d('lookups'), hits: d('hits'),
          bytes: d('bytes_uploaded'), wait: d('wait_s'), predicted: d('predicted'), used: d('predicted_used'),
          needed: d('needed_after_prediction')};
}"""


def bench_browser(path, tokens: int = 16, runs=RUNS, repeats: int = 3) -> list[dict]:
    """As bench.bench, each budget in a fresh page of one Chromium, in rounds after a warm-up."""
    from .headless import browser, serving
    total, slot, plans = budgets(path, runs)
    name = Package(path).dir.name
    with serving(create_app([Path(path)], api=False)) as url, browser() as ctx:
        def run_one(budget, prefetch) -> dict:
            page = ctx.new_page()
            page.goto(url + "/")
            r = page.evaluate(PAGE_RUN, [f"/models/{name}/manifest.json", budget, prefetch, tokens])
            page.close()
            tokens_done = max(1, r["tokens"])
            return {"slots": r["slots"], "experts": total, "budget_mib": r["slots"] * slot / 2**20,
                    "tokens_per_s": r["tokens"] / r["seconds"] if r["seconds"] else 0.0,
                    "hit_rate": r["hits"] / r["lookups"] if r["lookups"] else 1.0,
                    "bytes_per_token": r["bytes"] / tokens_done,
                    "wait_share": r["wait"] / r["seconds"] if r["seconds"] else 0.0,
                    "precision": r["used"] / r["predicted"] if r["predicted"] else None,
                    "recall": r["used"] / r["needed"] if r["needed"] else None, "adapter": r["adapter"]}
        return in_rounds(plans, run_one, repeats)


PAGE_SPEED = """async ([manifest, options]) => {
  const webmoe = await import('/web/dist/standalone/webmoe.js');
  const e = await webmoe.load(manifest, {maxSeqLen: options.prompt + options.tokens + 1,
                                         adapterClass: options.adapterClass});
  const r = await e.speed(options);
  // a token through the page's API: generate() in the worker, each token a message to the page
  const api = [];
  for (let i = 0; i < options.repeats; i++) {
    const times = [];
    for await (const _ of e.generate([1], {maxNewTokens: options.tokens + 1, temperature: 0})) times.push(performance.now());
    if (times.length > 1) api.push((times.at(-1) - times[0]) / (times.length - 1));
  }
  await e.unload();
  return [r, api];
}"""


def speed_browser(path, prompt: int = 128, tokens: int = 32, repeats: int = 3, profile: bool = False,
                  seed: int = 0, adapter_class: str | None = None) -> dict:
    """speed.measure's figures in headless Chromium (web/speed.js in the engine's worker), and per_token_ms's
    api: a token through the page's generate() (the worker's messages added). adapter_class: the plan
    variant to run (default: the adapter's own)."""
    from .headless import browser, serving
    name = Package(path).dir.name
    with serving(create_app([Path(path)], api=False)) as url, browser() as ctx:
        page = ctx.new_page()
        page.goto(url + "/")
        r, api = page.evaluate(PAGE_SPEED, [f"/models/{name}/manifest.json", {"prompt": prompt, "tokens": tokens,
                                                                         "repeats": repeats, "profile": profile,
                                                                         "seed": seed, "adapterClass": adapter_class}])
        page.close()
    r["per_token_ms"]["api"] = statistics.median(api) if api else None
    return {"package": str(path), **r}
