"""Serving files safely over HTTP: paths confined to a root (no `..`, encoded or not, no symlinks that
lead out), MIME types the browser accepts for modules and shaders, and single-range requests with
content-hash ETags for package shards."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from aiohttp import web

MIME = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
        ".json": "application/json", ".wgsl": "text/plain", ".bin": "application/octet-stream",
        ".png": "image/png", ".svg": "image/svg+xml", ".md": "text/markdown", ".txt": "text/plain",
        ".jinja": "text/plain"}
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})$")   # longer numbers: not a range we serve, ignored
CHUNK = 1 << 20


def confined(root: Path, rel: str) -> Path | None:
    """root/rel if it is an existing file inside root after resolving symlinks, else None."""
    if not rel or "\0" in rel or "\\" in rel or any(part in ("..", "") for part in rel.split("/")):
        return None
    try:
        path = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return path if path.is_file() and path.is_relative_to(root.resolve()) else None


def content_type(path: Path) -> str:
    return MIME.get(path.suffix, "application/octet-stream")


def static_file(path: Path) -> web.FileResponse:
    resp = web.FileResponse(path, headers={"Cache-Control": "no-cache"})
    resp.content_type = content_type(path)
    return resp


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


async def hashed_file(request: web.Request, path: Path, sha256: str, extra: dict | None = None) -> web.StreamResponse:
    """A file whose content hash is known: strong ETag, If-None-Match, If-Range and one byte range; `extra`
    headers on every answer (CORS)."""
    size = path.stat().st_size
    etag = f'"{sha256}"'
    extra = extra or {}
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "no-cache",
               "Content-Type": content_type(path), **extra}
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers={"ETag": etag, **extra})
    start, end, status = 0, size - 1, 200
    rng = request.headers.get("Range")
    if rng and request.headers.get("If-Range", etag) == etag:
        m = _RANGE.match(rng.strip())
        if m and (m[1] or m[2]):
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            else:
                start = max(0, size - int(m[2]))
            if start > end or start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}", "ETag": etag, **extra})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    resp = web.StreamResponse(status=status, headers=headers)
    await resp.prepare(request)
    if request.method != "HEAD":
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                block = f.read(min(CHUNK, left))
                if not block:
                    break
                await resp.write(block)
                left -= len(block)
    await resp.write_eof()
    return resp
