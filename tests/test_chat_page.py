"""The chat page `webmoe serve` sends, in headless Chromium: a private window, streamed tokens, what it says
at each load stage, a lost GPU device, its layout, and clear messages for a missing module, a network
failure and no WebGPU."""
import asyncio
import json
import re
import threading
from pathlib import Path

from aiohttp import web

from browser import (Recorder, app_with, browser, corrupt_in_opfs, open_page, packages,  # packages: a fixture
                     private_window, serving)
from webmoe.serve.server import create_app

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
SCREENSHOTS = ROOT / "out" / "screenshots"


def test_chat_page_in_a_private_window():
    """A private window (a context with no profile on disk, its storage in memory) whose quota is too small
    for the model (Chromium grants a private window here 4 GiB, less than a full-size model; the demo needs
    a quota lowered to 1 MB to be too large) loads the demo from the chat page, says that nothing is kept
    between visits, and chats."""
    with serving(create_app([DEMO])) as url, private_window() as ctx:
        page = open_page(ctx, url + "/")
        ctx.new_cdp_session(page).send("Storage.overrideQuotaForOrigin", {"origin": url, "quotaSize": 1_000_000})
        page.goto(url + "/?autoload")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        note = page.inner_text("#notice")
        assert "Nothing of" in note and "next visit downloads it again" in note, note
        page.click("#settings summary")
        page.fill("#max-tokens", "4")
        page.fill("#prompt", "Good morrow")
        page.click("#send")
        page.wait_for_selector("#send:not([disabled])", timeout=120_000)
        assert page.inner_text(".msg.assistant").strip()


def test_chat_page_streams_tokens():
    pkg = DEMO
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with serving(create_app([pkg])) as url, browser() as ctx:
        page = open_page(ctx, url + "/?autoload")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        assert "swiftshader" in page.inner_text("#status").lower()
        page.click("#settings summary")
        page.fill("#max-tokens", "6")
        page.fill("#prompt", "Good morrow, how are you?")
        # every text the reply's bubble shows, and when: streamed, it grows token by token while Send is
        # still disabled; a page that wrote the whole reply at the end would show one text
        page.evaluate("""() => {
          window.shown = [];
          new MutationObserver(() => {
            const b = document.querySelector('.msg.assistant');
            if (b && b.textContent && b.textContent !== window.shown.at(-1)?.text) {
              window.shown.push({text: b.textContent, busy: document.querySelector('#send').disabled});
            }
          }).observe(document.querySelector('#log'), {subtree: true, childList: true, characterData: true});
        }""")
        page.click("#send")
        page.wait_for_selector(".msg.assistant")
        page.wait_for_selector("#send:not([disabled])", timeout=120_000)
        reply = page.inner_text(".msg.assistant")
        assert reply.strip()
        shown = page.evaluate("window.shown")
        assert len(shown) >= 3 and all(s["busy"] for s in shown), shown                 # several texts, mid-reply
        assert all(b["text"].startswith(a["text"]) for a, b in zip(shown, shown[1:])), shown   # each grows the last
        status = page.inner_text("#status")
        assert "tokens/s" in status and int(status.split()[0]) <= 6, status      # the Max tokens setting
        # the live expert heatmap: a header of expert numbers, one row per MoE layer, one cell per expert
        rows = page.locator("#heatmap tr")
        assert rows.count() == 5 and [rows.nth(i).locator("td").count() for i in range(1, 5)] == [8] * 4
        assert rows.first.inner_text().split() == [str(e) for e in range(8)]
        assert "Rows: MoE layers" in page.inner_text("aside .legend")
        page.wait_for_function("document.querySelector('#cache-stats').textContent.includes('lookups')")
        page.screenshot(path=str(SCREENSHOTS / "chat.png"))
        assert page.inner_text("#cached").count("MiB") == 1


class Gate:
    """aiohttp middleware that holds the responses for the named files until the test releases them."""

    def __init__(self, *names: str):
        self.held: dict[str, threading.Event] = {}
        self.hold(*names)
        self.middleware = web.middleware(lambda request, handler: self.handle(request, handler))

    def hold(self, *names: str):
        self.held.update((n, threading.Event()) for n in names)

    async def handle(self, request, handler):
        event = self.held.get(request.path.rsplit("/", 1)[-1])
        while event is not None and not event.is_set():
            await asyncio.sleep(0.05)
        return await handler(request)

    def release(self, name: str):
        self.held[name].set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):      # whatever happened, nothing stays held (the server can stop)
        for event in self.held.values():
            event.set()


def stage_text(page, stage):
    return page.inner_text(f"#stages li[data-stage={stage}]")


def test_page_says_what_to_do_and_shows_each_load_stage(packages):
    """A first visit says to press Load (naming what downloads now and in all), or to choose a model when
    there are several. Load shows each stage with its progress: the server holds the dense shard, so the
    page is caught downloading while the kernels compile (screenshot), then with the download and upload
    done (screenshot); every text the compile stage showed is recorded, and one of them counts kernels
    still compiling while the prompt is disabled (the kernels are inside the build: no request of theirs
    can be held); the next visit loads the
    model by itself, and a dense shard corrupted in OPFS is fetched again while uploading (screenshot)."""
    pkg = packages["gqa-top2-f32"]
    m = json.loads((pkg / "manifest.json").read_text())
    dense = next(s["file"] for s in m["shards"] if s["kind"] == "dense")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    gate = Gate(dense)
    with serving(app_with(gate, pkg)) as url, browser() as ctx, gate:
        page = open_page(ctx, url + "/")
        page.wait_for_selector("#notice:not([hidden])")
        assert page.inner_text("#notice").startswith(f"Press Load to chat with {pkg.name}: it downloads the dense weights (")
        page.evaluate("""() => {
          window.compileTexts = [];
          new MutationObserver(() => {
            const li = document.querySelector('#stages li[data-stage=compile]');
            if (li) window.compileTexts.push([li.textContent, document.getElementById('prompt').disabled]);
          }).observe(document.getElementById('stages'), {subtree: true, childList: true, characterData: true});
        }""")
        page.click("#load")
        page.wait_for_selector("#stages li[data-stage=compile]")
        page.wait_for_function("document.querySelector('#stages li[data-stage=download]')?.textContent"
                               ".includes('(1 shard to go)')")       # the held one; the tokenizer files are in
        page.screenshot(path=str(SCREENSHOTS / "stage-download.png"))
        assert re.fullmatch(r"Downloading [\d.]+ MiB / [\d.]+ MiB \(1 shard to go\); \d+ experts come when the "
                            r"router first asks for them", stage_text(page, "download")), stage_text(page, "download")
        assert re.fullmatch(r"Compiling kernels \d+ / \d+", stage_text(page, "compile"))
        gate.release(dense)
        page.wait_for_function("document.querySelector('#stages li[data-stage=upload]')?.textContent"
                               ".startsWith('Uploaded')")
        page.screenshot(path=str(SCREENSHOTS / "stage-compile.png"))
        assert stage_text(page, "download").startswith("Downloaded ")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        counts = [(tuple(map(int, m.groups())), disabled) for text, disabled in page.evaluate("window.compileTexts")
                  if (m := re.fullmatch(r"Compiling kernels (\d+) / (\d+)", text))]
        assert any(done < total and disabled for (done, total), disabled in counts), counts
        assert page.is_hidden("#progress")
        # the next visit: remembered and in OPFS, it loads by itself; its dense shard, corrupted in OPFS,
        # fails its hash when read for the upload and is fetched again (held by the server meanwhile)
        corrupt_in_opfs(page, dense, 0)
        page.close()
        gate.hold(dense)
        page = open_page(ctx, url + "/")
        page.wait_for_selector("#stages li[data-stage=upload]")
        page.screenshot(path=str(SCREENSHOTS / "stage-upload.png"))
        assert stage_text(page, "download").startswith("Downloaded ")
        assert re.fullmatch(r"Uploading to the GPU 0\.0 MiB / [\d.]+ MiB", stage_text(page, "upload"))
        gate.release(dense)
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
    with serving(create_app([pkg, packages["odd-sizes-top3-f16"]])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.wait_for_selector("#notice:not([hidden])")
        assert page.inner_text("#notice").startswith("Choose a model above and press Load")
        assert page.is_disabled("#prompt")


def ask(page, text):
    """Sends a message on the chat page and waits for the whole reply; returns it."""
    n = page.locator(".msg.assistant").count()
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length > {n}")
    page.wait_for_selector("#send:not([disabled])", timeout=120_000)
    return page.locator(".msg.assistant").nth(n).inner_text()


def test_page_recovers_from_a_lost_gpu_device():
    """Chromium's GPU process crashes after a reply (the DevTools command): the page says the device was
    lost, loads the model again by itself (its dense shard and the experts used so far from OPFS), and
    answers the next message."""
    with serving(create_app([DEMO])) as url, browser() as ctx:
        page = open_page(ctx, url + "/?autoload")
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        page.click("#settings summary")
        page.fill("#max-tokens", "4")
        assert ask(page, "Good morrow").strip()
        ctx.new_cdp_session(page).send("Browser.crashGpuProcess")
        page.wait_for_function("document.querySelector('#notice').textContent.includes('loaded again')", timeout=120_000)
        text = page.inner_text("#notice")
        assert text.startswith("The GPU device was lost (") and "the conversation goes on" in text, text
        assert ask(page, "And you?").strip()
        assert page.locator(".msg.user").count() == 2


def test_page_layout_at_phone_width_and_as_the_sidebar_grows(packages):
    """On a desktop window the input box stays where it is while the sidebar grows (settings opened, the
    heatmap drawn); at 420 px every control is on screen."""
    with serving(create_app([packages["gqa-top2-f32"]])) as url, browser() as ctx:
        page = open_page(ctx, url + "/?autoload")
        page.set_viewport_size({"width": 1200, "height": 700})
        page.wait_for_selector("#prompt:not([disabled])", timeout=120_000)
        before = page.locator("#prompt").bounding_box()
        page.click("#settings summary")
        page.fill("#max-tokens", "3")
        ask(page, "Hello")
        page.wait_for_selector("#heatmap table")
        assert page.locator("#prompt").bounding_box() == before
        page.set_viewport_size({"width": 420, "height": 800})
        for control in ("#model", "#load", "#prompt", "#send", "#stop"):
            box = page.locator(control).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 420 and box["y"] >= 0, (control, box)
        page.screenshot(path=str(SCREENSHOTS / "phone.png"), full_page=True)


def test_missing_module_gives_a_clear_message(packages):
    """With the runtime's worker module missing (served as 404), loading ends in a message that says what
    happened and what to do, instead of waiting forever."""
    @web.middleware
    async def no_worker(request, handler):
        if request.path.endswith("/worker.js"):
            raise web.HTTPNotFound()
        return await handler(request)
    app = create_app([packages["gqa-top2-f32"]])
    app.middlewares.append(no_worker)
    with serving(app) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.click("#load")
        page.wait_for_selector("#notice.error", timeout=60_000)
        text = page.inner_text("#notice")
    assert "worker could not start" in text and "worker.js is served beside webmoe.js" in text, text


def test_network_failure_gives_a_clear_message(packages):
    """A server that refuses every shard: after its retries the page says which shard could not be
    downloaded, from where, and what to do."""
    with serving(app_with(Recorder(refuse=True), packages["gqa-top2-f32"])) as url, browser() as ctx:
        page = open_page(ctx, url + "/")
        page.click("#load")
        page.wait_for_selector("#notice.error", timeout=60_000)
        text = page.inner_text("#notice")
    assert re.match(r"could not download \S+\.bin from 127\.0\.0\.1:\d+ \(\S+\.bin: HTTP 503\)\. Check the network "
                    r"connection and load again: what has arrived is kept", text), text


def test_no_webgpu_gives_a_clear_message(packages, tmp_path):
    from browser import CHROMIUM, playwright
    with serving(create_app([packages["gqa-top2-f32"]])) as url:
        b = playwright().chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-background-networking", "--disable-gpu",
                                     "--disable-features=WebGPU,Vulkan", "--disable-component-update"])
        page = b.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#notice:not([hidden])")
        assert "WebGPU is not available" in page.inner_text("#notice")
        b.close()


