"""The npm package's sizes and the demo's load time from a plain static host against `webmoe serve`.

    .venv/bin/python benchmarks/bench_npm_package.py [--reps 3]

Packs web/ (`npm pack`), installs the tarball into the test suite's Vite app (tests/data/vite_app) and builds
it, then prints: the tarball's size, what `npm install` puts in node_modules for it (the package and its
three dependencies), the built app's files (the worker chunk among them), and the time `webmoe.load()` of
the demo package takes in headless Chromium from (a) the built app on a plain static server with the package
on a second origin (a static server with CORS, like a CDN) and (b) the chat page's origin, `webmoe serve`,
alternating, each load cold (storage: "memory", a fresh browser profile), median and spread of --reps.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from webmoe.serve.server import create_app
from webmoe.tools.headless import browser, serving

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
DEMO = ROOT / "demo" / "shakespeare-moe"
SCHEMA = quote(json.dumps({"type": "array", "items": {"type": "string"}}))    # the app also asks for JSON
APP = ROOT / "tests" / "data" / "vite_app"

TIME_LOAD = """async ([module, manifest]) => {
  const webmoe = await import(module);
  const t0 = performance.now();
  const e = await webmoe.load(manifest, {storage: 'memory'});
  const s = (performance.now() - t0) / 1000;
  await e.unload();
  return s;
}"""


def npm(cwd: Path, *args: str) -> str:
    return subprocess.run(["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def static(root: Path, cors: bool) -> web.Application:
    @web.middleware
    async def headers(request, handler):
        resp = await handler(request)
        if cors:
            resp.headers["Access-Control-Allow-Origin"] = "*"
        return resp

    async def index(request):
        return web.FileResponse(root / "index.html")
    app = web.Application(middlewares=[headers])
    app.router.add_get("/", index)
    app.router.add_static("/", root)
    return app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="webmoe-npm-"))
    try:
        packed = json.loads(npm(WEB, "pack", "--json", "--pack-destination", str(tmp)))[0]
        tgz = tmp / packed["filename"]
        app = tmp / "app"
        shutil.copytree(APP, app)
        tools = json.loads((WEB / "package.json").read_text())["devDependencies"]
        (app / "package.json").write_text(json.dumps({
            "name": "an-app", "private": True, "type": "module", "scripts": {"build": "vite build"},
            "dependencies": {"webmoe": f"file:{tgz}"},
            "devDependencies": {"vite": tools["vite"]}}))
        npm(app, "install", "--prefer-offline")
        npm(app, "run", "build")
        mods = app / "node_modules"
        installed = {n: folder_bytes(mods / n) for n in ("webmoe", "@huggingface/tokenizers", "@huggingface/jinja",
                                                        "@cfworker/json-schema")}
        assets = sorted((app / "dist" / "assets").iterdir())
        print(f"npm package {packed['name']}@{packed['version']}: tarball {tgz.stat().st_size / 1e3:.1f} kB, unpacked "
              f"{packed['unpackedSize'] / 1e3:.1f} kB, {packed['entryCount']} files")
        print("installed: " + ", ".join(f"{n} {b / 1e3:.1f} kB" for n, b in installed.items()) +
              f"; together {sum(installed.values()) / 1e3:.1f} kB")
        print("built app (vite build): " + ", ".join(f"{p.name} {p.stat().st_size / 1e3:.1f} kB" for p in assets) +
              f"; dist/ {folder_bytes(app / 'dist') / 1e3:.1f} kB")
        times = {"static host + CDN": [], "webmoe serve": []}
        with serving(static(app / "dist", cors=False)) as site, serving(static(DEMO.parent, cors=True)) as cdn, \
                serving(create_app([DEMO])) as served:
            for rep in range(args.reps):
                for kind in (list(times) if rep % 2 == 0 else list(reversed(times))):
                    with browser() as ctx:
                        page = ctx.new_page()
                        if kind == "webmoe serve":          # the chat page's origin, its runtime and package
                            page.goto(served + "/")
                            s = page.evaluate(TIME_LOAD, ["/web/dist/standalone/webmoe.js",
                                                          f"/models/{DEMO.name}/manifest.json"])
                        else:                               # the built app, timing its own load() of the CDN's package
                            page.goto(f"{site}/?model={cdn}/{DEMO.name}/&schema={SCHEMA}")
                            page.wait_for_selector("#out[data-result]", state="attached", timeout=300_000)
                            result = json.loads(page.get_attribute("#out", "data-result"))
                            if "error" in result:
                                raise SystemExit(f"the app failed: {result['error']}")
                            s = result["loadSeconds"]
                    times[kind].append(s)
        for kind, ts in times.items():
            print(f"load of {DEMO.name} from {kind}: median {statistics.median(ts):.2f} s "
                  f"(min {min(ts):.2f}, max {max(ts):.2f}, {len(ts)} cold loads)")
        a, b = (statistics.median(times[k]) for k in times)
        print(f"ratio static/serve: {a / b:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
