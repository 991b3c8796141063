"""Page helpers for the browser tests; Chromium and the server come from webmoe.tools.headless."""
from __future__ import annotations

import numpy as np

from measured import record
from webmoe.tools.headless import CHROMIUM, FLAGS, browser, playwright, private_window, serving  # noqa: F401

# max abs logit difference browser vs native, relative to the largest native logit: 2.71e-4 at most over 32
# comparisons (SwiftShader against lavapipe: f16 and block-format packages included), 3.7x
BROWSER_TOL = 1e-3


def assert_matches_native(got, want) -> float:
    """Browser logits within BROWSER_TOL of the native engine's, relative to the largest native logit; the
    error is recorded (tests/measured.py)."""
    err = record("browser logits vs native", BROWSER_TOL, float(np.abs(np.asarray(got) - want).max() / np.abs(want).max()))
    assert err <= BROWSER_TOL, f"browser logits differ from the native engine's by {err:.3g} of the largest"
    return err


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
