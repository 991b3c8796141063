"""`webmoe serve`: what it serves, with which types, ranges and ETags, and what it refuses."""
import hashlib
import http.client
import json
import os

import pytest
from transformers import MixtralForCausalLM

from browser import serving
from test_mixtral import CONFIGS
from webmoe.converter.convert import convert
from webmoe.serve.server import create_app
from tiny_models import save_checkpoint


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    pkg = convert(save_checkpoint(MixtralForCausalLM, CONFIGS["gqa-top2"], root / "ckpt"), root / "tiny",
                  dtype="f16", progress=False)
    (pkg / "secret.txt").write_text("not in the manifest")
    web = root / "web"
    web.mkdir()
    (web / "index.html").write_text("<h1>hi</h1>")
    (web / "app.js").write_text("export const x = 1;")
    (web / "node_modules").mkdir()
    (web / "node_modules" / "private.js").write_text("x")
    os.symlink("/etc/passwd", web / "passwd.js")           # a symlink that leads out of the web root
    (root / "outside.js").write_text("outside")
    with serving(create_app([pkg], web_dir=web)) as url:
        yield url, pkg


def get(url, path, headers=None, method="GET"):
    host = url.split("//")[1]
    c = http.client.HTTPConnection(host, timeout=30)
    c.request(method, path, headers=headers or {})     # sent as written: no client-side normalisation
    r = c.getresponse()
    return r.status, dict(r.getheaders()), r.read()


def test_serves_app_shaders_vendor_and_models(site):
    url, pkg = site
    status, h, body = get(url, "/")
    assert status == 200 and h["Content-Type"].startswith("text/html") and body == b"<h1>hi</h1>"
    status, h, _ = get(url, "/web/app.js")
    assert status == 200 and h["Content-Type"].startswith("text/javascript")
    status, h, body = get(url, "/shaders/matmul.wgsl")
    assert status == 200 and b"fn main" in body
    status, _, body = get(url, "/models")
    assert status == 200 and json.loads(body)[0]["manifest"] == "/models/tiny/manifest.json"
    status, h, body = get(url, "/models/tiny/manifest.json")
    assert status == 200 and h["Content-Type"].startswith("application/json")
    assert h["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'


def test_shard_ranges_and_etags(site):
    url, pkg = site
    shard = json.loads((pkg / "manifest.json").read_text())["shards"][0]
    data = (pkg / shard["file"]).read_bytes()
    path = f"/models/tiny/{shard['file']}"
    status, h, body = get(url, path)
    assert status == 200 and body == data and h["ETag"] == f'"{shard["sha256"]}"' and h["Accept-Ranges"] == "bytes"
    assert h["Content-Type"] == "application/octet-stream"
    for rng, part in (("bytes=0-9", data[:10]), ("bytes=100-", data[100:]), ("bytes=-7", data[-7:]),
                      (f"bytes=5-{len(data) + 50}", data[5:])):
        status, h, body = get(url, path, {"Range": rng})
        assert status == 206 and body == part, rng
        start = data.find(part) if rng != "bytes=-7" else len(data) - 7
        assert h["Content-Range"] == f"bytes {start}-{start + len(part) - 1}/{len(data)}"
    status, h, _ = get(url, path, {"Range": f"bytes={len(data)}-"})
    assert status == 416 and h["Content-Range"] == f"bytes */{len(data)}"
    status, _, body = get(url, path, {"Range": "bytes=0-9", "If-Range": '"stale"'})   # changed: whole file
    assert status == 200 and body == data
    status, _, body = get(url, path, {"If-None-Match": f'"{shard["sha256"]}"'})
    assert status == 304 and body == b""


@pytest.mark.parametrize("path", [
    "/web/../outside.js", "/web/%2e%2e/outside.js", "/web/..%2foutside.js", "/web/%2E%2E%2Foutside.js",
    "/web/passwd.js", "/web/node_modules/private.js", "/web//etc/passwd", "/web/%2fetc%2fpasswd",
    "/shaders/../engine/server.py", "/shaders/..%2fREADME.md", "/shaders/%2e%2e%2fREADME.md",
    "/models/tiny/secret.txt", "/models/tiny/..%2fckpt%2fconfig.json", "/models/tiny/%2e%2e/ckpt/config.json",
    "/models/../tiny/manifest.json", "/vendor/..%2fpackage.json", "/web/app.js%00.png",
])
def test_refuses_paths_outside_what_it_serves(site, path):
    url, _ = site
    status, _, body = get(url, path)
    assert status in (400, 403, 404), (path, status)
    assert b"root:" not in body and b"outside" not in body and b"not in the manifest" not in body
