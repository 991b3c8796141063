"""Page helpers for the browser tests; Chromium and the server come from webmoe.tools.headless."""
from __future__ import annotations

from webmoe.tools.headless import CHROMIUM, FLAGS, browser, playwright, private_window, serving  # noqa: F401

BROWSER_TOL = 1e-3   # max abs logit difference browser vs native, relative to the largest logit


def open_page(ctx, url: str):
    page = ctx.new_page()
    page.on("console", lambda m: print("[page]", m.text) if m.type in ("error", "warning") else None)
    page.goto(url)
    return page


LOAD = """async ([manifest, options]) => {
  const webmoe = await import('/web/dist/standalone/webmoe.js');
  window.engine = await webmoe.load(manifest, options || {});
  const e = window.engine;
  return {adapter: e.adapter, family: e.family, description: e.description, ephemeral: e.ephemeral};
}"""
LOGITS = "async ([ids]) => Array.from(await window.engine.logits(ids))"
GREEDY = """async ([ids, n]) => {
  const out = [];
  for await (const t of window.engine.generate(ids, {maxNewTokens: n, temperature: 0})) out.push(t.id);
  return out;
}"""
