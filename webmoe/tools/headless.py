"""Headless Chromium with WebGPU on SwiftShader, and `webmoe serve` in a background thread: what the
browser tests and the browser benchmark drive. Uses Debian's chromium (never `playwright install`)."""
from __future__ import annotations

import asyncio
import atexit
import socket
import tempfile
import threading
from contextlib import contextmanager

from aiohttp import web

from webmoe.serve.server import PACKAGES

CHROMIUM = "/usr/bin/chromium"
THROTTLE_CHUNK = 64 << 10     # the bytes a throttled link sends at once
FLAGS = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
         "--use-webgpu-adapter=swiftshader", "--no-sandbox", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


class Throttle:
    """Sends shards (whole files; the runs here never resume) at `rate` bytes/s in all, however many
    requests share the link, and counts the bytes."""

    def __init__(self, rate: float):
        self.rate, self.sent = rate, 0
        self.link_free_at = 0.0          # when the link has sent everything scheduled so far (loop time)
        self.middleware = web.middleware(lambda request, handler: self.handle(request, handler))

    async def handle(self, request, handler):
        if not request.path.endswith(".bin"):
            return await handler(request)
        sp = next(iter(request.app[PACKAGES].values()))
        data = (sp.dir / request.path.rsplit("/", 1)[1]).read_bytes()
        resp = web.StreamResponse(headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        try:
            for i in range(0, len(data), THROTTLE_CHUNK):
                n = min(THROTTLE_CHUNK, len(data) - i)
                self.link_free_at = max(self.link_free_at, loop.time()) + n / self.rate
                await asyncio.sleep(self.link_free_at - loop.time())
                await resp.write(data[i:i + n])
                self.sent += n
            await resp.write_eof()
        except ConnectionResetError:        # the page aborted the fetch (a prediction it no longer wants)
            pass
        return resp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: web.Application):
    """Runs an aiohttp app on 127.0.0.1 in a background thread; yields its base URL. Everything asyncio
    happens in that thread, so this nests inside Playwright's sync API (which runs a loop here)."""
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(app)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start():
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(30)  # its threads end
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


_playwright = None


def playwright():
    """The process's one Playwright (its sync API cannot be started twice at once)."""
    global _playwright
    if _playwright is None:
        from playwright.sync_api import sync_playwright
        _playwright = sync_playwright().start()
        atexit.register(_playwright.stop)
    return _playwright


@contextmanager
def browser():
    """A fresh Chromium with its own empty profile (so OPFS starts empty)."""
    with tempfile.TemporaryDirectory() as profile:
        ctx = playwright().chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                             args=FLAGS)
        try:
            yield ctx
        finally:
            ctx.close()


@contextmanager
def private_window():
    """A Chromium context with no profile on disk, as a private window is: its storage lives in memory, under
    a quota of its own (4 GiB on this 24 GiB machine)."""
    chromium = playwright().chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    try:
        ctx = chromium.new_context()
        try:
            yield ctx
        finally:
            ctx.close()
    finally:
        chromium.close()
