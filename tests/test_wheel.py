"""A built wheel is a complete product: installed into a fresh virtual environment outside the
repository, `webmoe serve` serves a chat page that loads the demo model and answers in headless
Chromium; optional features say what to install before doing any work."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import browser, open_page

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin dir, a working directory outside the repository) with the wheel of this checkout installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheels = list((tmp / "dist").glob("webmoe-*.whl"))
    assert len(wheels) == 1
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
    bin_dir = tmp / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheels[0])], check=True, cwd=tmp,
                   capture_output=True)
    return bin_dir, tmp


def run(bin_dir, cwd, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "webmoe"), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_wheel_holds_the_web_app_and_kernels(installed):
    bin_dir, cwd = installed
    site = subprocess.run([str(bin_dir / "python"), "-c", "import webmoe, importlib.resources as r; "
                           "print(r.files('webmoe.web')); print(r.files('webmoe.shaders'))"],
                          capture_output=True, text=True, cwd=cwd, check=True).stdout.split()
    web_dir, shader_dir = Path(site[0]), Path(site[1])
    assert ROOT not in web_dir.parents                      # the installed copy, not the checkout
    for f in ("index.html", "app.js", "units.js", "style.css", "dist/standalone/webmoe.js", "dist/standalone/worker.js",
              "dist/xgrammar.js"):
        assert (web_dir / f).is_file(), f
    # the runtime as the npm package builds it: the sources it was built from, not a copy of their imports
    worker = (web_dir / "dist" / "standalone" / "worker.js").read_text()
    assert "ModelStore" in worker and "fn main" in worker                      # engine and kernels inline
    assert not (web_dir / "engine.js").exists() and not (web_dir / "vendor").exists()
    assert (shader_dir.parent / "schemas" / "manifest.schema.json").is_file()
    assert not (web_dir / "node_modules").exists()
    assert (shader_dir / "matmul.wgsl").is_file() and (shader_dir / "moe_expert.wgsl").is_file()
    package = shader_dir.parent
    assert (package / "format" / "manifest.py").is_file()
    assert not (package / "tiny_models.py").exists()        # a test helper, not the product
    r = run(bin_dir, cwd, "--version")
    assert r.returncode == 0 and r.stdout.startswith("webmoe ")


def test_missing_extras_fail_before_any_work(installed):
    bin_dir, cwd = installed
    prompts = cwd / "prompts.txt"
    prompts.write_text("Hello\n")
    r = run(bin_dir, cwd, "analyze", str(DEMO), "--prompts", str(prompts), "--out", str(cwd / "analysis"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["webmoe: error: webmoe analyze needs matplotlib, which is not "
                                             "installed: pip install 'webmoe[plots]'"]
    assert not (cwd / "analysis").exists()
    r = run(bin_dir, cwd, "bench", str(DEMO), "--browser")
    assert r.returncode == 1 and "pip install 'webmoe[browser]'" in r.stderr and len(r.stderr.splitlines()) == 1


def test_installed_server_chats_in_chromium(installed):
    bin_dir, cwd = installed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    server = subprocess.Popen([str(bin_dir / "webmoe"), "serve", str(DEMO), "--port", str(port)], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.2)
        with browser() as ctx:
            page = open_page(ctx, f"http://127.0.0.1:{port}/")
            page.click("#load")
            page.wait_for_selector("#prompt:not([disabled])", timeout=180_000)
            page.fill("#prompt", "Good morrow, how are you?")
            page.click("#send")
            page.wait_for_function("document.querySelector('.msg.assistant')?.textContent.length > 0",
                                   timeout=180_000)
            page.click("#stop")
            page.wait_for_selector("#send:not([disabled])", timeout=180_000)
            assert page.locator("#notice.error").count() == 0
            assert len(page.locator(".msg.assistant").text_content()) > 0
            # structured output from the installed copy: its worker loads the grammar library the wheel ships
            answer = page.evaluate("""async () => {
              const webmoe = await import('/web/dist/standalone/webmoe.js');
              const engine = await webmoe.load('/models/shakespeare-moe/manifest.json');
              const c = await engine.chat.completions.create({messages: [{role: 'user', content: 'Answer in JSON.'}],
                max_tokens: 60, temperature: 0, response_format: {type: 'json_object'}});
              return c.choices[0].message.content;
            }""")
            assert isinstance(json.loads(answer), dict)
    finally:
        server.terminate()
        server.wait(30)
