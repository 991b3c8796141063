"""Page helpers for the browser tests (test_browser.py, test_browser_storage.py, test_chat_page.py, ...);
Chromium and the server come from webmoe.tools.headless."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from transformers import MixtralForCausalLM

from measured import record
from tiny_models import save_checkpoint
from webmoe import Engine
from webmoe.converter.convert import convert
from webmoe.serve.server import PACKAGE_CORS, PACKAGES, create_app
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
  return {adapter: e.adapter, adapterClass: e.adapterClass, family: e.family, description: e.description, ephemeral: e.ephemeral};
}"""
LOGITS = "async ([ids]) => Array.from(await window.engine.logits(ids))"
GREEDY = """async ([ids, n]) => {
  const out = [];
  for await (const t of window.engine.generate(ids, {maxNewTokens: n, temperature: 0})) out.push(t.id);
  return out;
}"""


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    out = {}
    for name, dtype in (("gqa-top2", "f32"), ("odd-sizes-top3", "f16")):
        from test_mixtral import CONFIGS
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


def corrupt_in_opfs(page, file: str, position: int) -> None:
    """Overwrites 16 bytes of `file` at `position` in every model folder webmoe keeps in the page's OPFS."""
    page.evaluate("""async ([file, position]) => {
      const root = await (await navigator.storage.getDirectory()).getDirectoryHandle('webmoe');
      for await (const [, dir] of root.entries()) {
        const w = await (await dir.getFileHandle(file)).createWritable({keepExistingData: true});
        await w.write({type: 'write', position, data: new Uint8Array(16).fill(7)});
        await w.close();
      }
    }""", [file, position])


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
        from parity import TOLERANCE
        assert last[n[i]] - last[b[i]] <= TOLERANCE["f32"] * np.abs(last).max(), (i, b, n)
