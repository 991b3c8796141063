"""The browser runtime as a web developer uses it (issue 25): `npm pack` in web/ makes the `webmoe` package; a
fresh Vite app (Vite from npm) installs the tarball, `vite build`s, is served by a plain static file server
(not `webmoe serve`) and chats in Chromium with the demo package from a second origin (a static host with
CORS, as a CDN); a page with no bundler imports the built module by URL from that other origin; tsc --noEmit
checks an app against the package's types, and fails one that misuses them."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import jsonschema
import pytest

from browser import browser, open_page
from static_hosts import static_host
from webmoe.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
DEMO = ROOT / "demo" / "shakespeare-moe"
APP = Path(__file__).resolve().parent / "data" / "vite_app"
PROMPT = "Speak, Romeo."


def npm(cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"npm {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("npm")
    npm(WEB, "pack", "--pack-destination", str(out))       # prepack builds dist/ from the sources
    tgz = list(out.glob("webmoe-*.tgz"))
    assert len(tgz) == 1
    return tgz[0]


@pytest.fixture(scope="module")
def vite_app(tarball, tmp_path_factory) -> Path:
    """tests/data/vite_app with the tarball installed, as `npm create vite` would make it, then built."""
    app = tmp_path_factory.mktemp("app")
    shutil.copytree(APP, app, dirs_exist_ok=True)
    tools = json.loads((WEB / "package.json").read_text())["devDependencies"]
    (app / "package.json").write_text(json.dumps({
        "name": "an-app", "private": True, "type": "module", "scripts": {"build": "vite build"},
        "dependencies": {"webmoe": f"file:{tarball}"},
        "devDependencies": {"vite": tools["vite"], "typescript": tools["typescript"]}}, indent=2))
    npm(app, "install", "--prefer-offline")
    npm(app, "run", "build")
    return app


def native_reply(n: int = 16) -> str:
    with Engine.load(DEMO) as engine:
        return "".join(t.text for t in engine.generate([{"role": "user", "content": PROMPT}], max_new_tokens=n))


def wait_for_result(page, timeout_s: float = 240) -> dict:
    page.wait_for_selector("#out[data-result]", state="attached", timeout=timeout_s * 1000)
    return json.loads(page.get_attribute("#out", "data-result"))


def test_the_tarball_holds_the_built_modules_and_types(tarball):
    with tarfile.open(tarball) as t:
        names = set(t.getnames())
        manifest = json.load(t.extractfile("package/package.json"))
        sources = {n: t.extractfile(n).read().decode() for n in names if n.endswith(".js")}
    assert {"package/package.json", "package/README.md", "package/dist/webmoe.js", "package/dist/worker.js",
            "package/dist/webmoe.d.ts", "package/dist/standalone/webmoe.js", "package/dist/standalone/worker.js",
            "package/dist/xgrammar.js"} <= names
    assert [n for n in names if "xgrammar" in n] == ["package/dist/xgrammar.js"]      # one copy, both builds load it
    assert not any("node_modules" in n or n.endswith(".py") for n in names)
    assert manifest["name"] == "webmoe" and manifest["exports"]["."]["types"] == "./dist/webmoe.d.ts"
    assert set(manifest["dependencies"]) == {"@huggingface/tokenizers", "@huggingface/jinja", "@cfworker/json-schema"}
    # the npm dependencies are imports in the bundler build and inline in the standalone one
    assert '"@huggingface/tokenizers"' in sources["package/dist/worker.js"]
    assert '"@huggingface/tokenizers"' not in sources["package/dist/standalone/worker.js"]
    # nothing that only Node has, no path of `webmoe serve`; XGrammar's emscripten build keeps a Node branch
    # (require, import("module")) that a browser never reaches, and no bundler reads that file: the workers
    # load it by URL (a bundler copies it as an asset, as the Vite test checks)
    grammar = sources.pop("package/dist/xgrammar.js")
    assert grammar.startswith("// XGrammar") and "export {" in grammar and "printed" in grammar
    for name, text in sources.items():
        assert "node:" not in text and "require(" not in text and "/web/" not in text and "/vendor/" not in text, name
        assert "xgrammar" not in text.lower() or 'xgrammar.js", import.meta.url' in text, name
    assert "fn main" in sources["package/dist/worker.js"]                   # the kernels inline


def test_types_check_an_app_and_refuse_a_wrong_one(vite_app):
    tsc = WEB / "node_modules" / ".bin" / "tsc"
    ok = subprocess.run([str(tsc), "--noEmit", "-p", str(vite_app)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = vite_app / "src" / "wrong.ts"
    wrong.write_text('import * as webmoe from "webmoe";\n'
                     'const e = await webmoe.load("hf://org/repo", { storage: "disk" });\n'
                     'await e.chat.completions.create({ messages: [{ role: "robot", content: "hi" }] });\n')
    try:
        bad = subprocess.run([str(tsc), "--noEmit", "-p", str(vite_app)], capture_output=True, text=True)
    finally:
        wrong.unlink()
    assert bad.returncode != 0
    assert '"disk"' in bad.stdout and '"robot"' in bad.stdout


CAST = {"type": "array", "items": {"enum": ["Romeo", "Juliet", "Tybalt"]}, "minItems": 2, "maxItems": 3}


def test_a_vite_app_chats_with_a_package_from_another_origin(vite_app):
    dist = vite_app / "dist"
    built = [p.name for p in (dist / "assets").iterdir()]
    assert len([n for n in built if n.startswith("worker") and n.endswith(".js")]) == 1, built   # emitted once
    assert len([n for n in built if n.startswith("xgrammar") and n.endswith(".js")]) == 1, built
    with static_host(dist) as site, static_host(DEMO.parent, cors=True) as cdn, browser() as ctx:
        assert site.rsplit(":", 1)[1] != cdn.rsplit(":", 1)[1]
        page = open_page(ctx, f"{site}/?model={cdn}/{DEMO.name}/&prompt={PROMPT}&schema={quote(json.dumps(CAST))}")
        r = wait_for_result(page)
    assert "error" not in r, r["error"]
    want = native_reply()
    assert r["text"] == r["streamed"] == want != ""
    jsonschema.validate(json.loads(r["json"]), CAST)       # the grammar library ran from the app's own assets
    assert r["usage"]["completion_tokens"] == 16 and r["usage"]["extra"]["decode_tokens_per_s"] > 0
    assert r["usage"]["extra"]["prefill_tokens_per_s"] > 0 and r["streamUsage"]["completion_tokens"] == 16
    assert {"download", "compile", "upload"} <= set(r["stages"])
    assert r["missing"] == "package_error"


@contextmanager
def vite_dev_server(app: Path, config: Path):
    """`vite` (the dev server an app's developer runs first) in the app, with `config`, on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vite = app / "node_modules" / ".bin" / "vite"
    server = subprocess.Popen([str(vite), "--config", str(config), "--port", str(port), "--strictPort", "--force",
                               "--host", "127.0.0.1"], cwd=app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "vite did not start"
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(30)


def test_vites_dev_server_runs_the_app_as_the_readme_configures_it(vite_app, tmp_path):
    """`vite` with web/README.md's one line (tests/data/vite_app/vite.config.js) serves an app that chats and
    gets JSON; without it Vite pre-bundles webmoe away from its worker, and the error says what to add."""
    bare = tmp_path / "vite.bare.config.js"
    bare.write_text("export default {};\n")
    schema = quote(json.dumps(CAST))
    with static_host(DEMO.parent, cors=True) as cdn, browser() as ctx:
        with vite_dev_server(vite_app, vite_app / "vite.config.js") as site:
            r = wait_for_result(open_page(ctx, f"{site}/?model={cdn}/{DEMO.name}/&prompt={PROMPT}&schema={schema}"))
        with vite_dev_server(vite_app, bare) as site:
            failed = wait_for_result(open_page(ctx, f"{site}/?model={cdn}/{DEMO.name}/&prompt={PROMPT}&schema={schema}"))
    assert "error" not in r, r["error"]
    assert r["text"] == native_reply() != ""
    jsonschema.validate(json.loads(r["json"]), CAST)
    assert failed["error"].startswith("WorkerError: webmoe's worker could not start")
    assert 'optimizeDeps: { exclude: ["webmoe"] }' in failed["error"]


NO_BUNDLER = """<!doctype html><meta charset="utf-8"><pre id="out"></pre>
<script type="module">
  import * as webmoe from "MODULE";
  try {
    const engine = await webmoe.load("PACKAGE");
    const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: "PROMPT" }],
                                                         max_tokens: 16, temperature: 0 });
    document.getElementById("out").dataset.result = JSON.stringify({ text: reply.choices[0].message.content });
  } catch (err) {
    document.getElementById("out").dataset.result = JSON.stringify({ error: `${err.name}: ${err.message}` });
  }
</script>"""


def test_a_page_with_no_bundler_imports_the_module_from_a_cdn(tarball, tmp_path):
    """The standalone build by URL from another origin (its worker started from a same-origin blob that
    imports it), the demo package from a third folder of that origin."""
    with tarfile.open(tarball) as t:
        t.extractall(tmp_path / "cdn", filter="data")
    shutil.copytree(DEMO, tmp_path / "cdn" / DEMO.name)
    (tmp_path / "site").mkdir()
    with static_host(tmp_path / "cdn", cors=True) as cdn, static_host(tmp_path / "site") as site, browser() as ctx:
        (tmp_path / "site" / "index.html").write_text(
            NO_BUNDLER.replace("MODULE", f"{cdn}/package/dist/standalone/webmoe.js")
            .replace("PACKAGE", f"{cdn}/{DEMO.name}/manifest.json").replace("PROMPT", PROMPT))
        page = open_page(ctx, site + "/")
        r = wait_for_result(page)
    assert r == {"text": native_reply()}
