"""webmoe beside the browser engines people pick instead, in the same headless Chromium on the same adapter.

    .venv/bin/python benchmarks/bench_browser_peers.py [--reps 3] [--only ENGINE,...] [--formats f16,q8,q4]

1. Writes one Qwen3-MoE checkpoint (random weights, 72 M parameters: hidden 1024, 8 layers, 16 heads / 4 KV
   heads, 8 experts top-2, expert intermediate 256, a 512-piece SentencePiece tokenizer), the shape of
   benchmarks/bench_llama.py's model in an architecture all three engines read, with transformers 4.57 in a
   virtual environment of its own (out/peers/venv: optimum-onnx needs transformers < 4.58).
2. Converts it for each engine as its users do: `webmoe convert` (f16, q8, q4); ONNX with optimum-onnx's
   exporter, as transformers.js's conversion does, then ONNX Runtime's quantizers for its q8
   (`model_quantized.onnx`, dynamic uint8) and q4 (`model_q4.onnx`, MatMulNBits, blocks of 32) and
   onnxconverter's fp16; GGUF with llama.cpp's converter (f16, q8_0; Q4_K_M by llama-quantize).
3. Serves everything from one local static server with the cross-origin isolation headers wasm threads
   need, and measures each engine and format in a fresh Chromium profile: a cold load (nothing cached),
   then in a second page a load from each engine's own cache (OPFS for webmoe and wllama, the Cache API for
   transformers.js) followed by one greedy generation from 128 random token ids: the time to the first new
   token (prefill of 128) and the 32 tokens after it (decode), and the browser's peak resident memory (all
   its processes) over the run. Engines and formats alternate within each repetition; medians of --reps.

A peer whose WebGPU backend cannot run on this adapter (SwiftShader has no `shader-f16`) runs its wasm
fallback, with threads; the table says which backend ran. benchmarks/browser_peers/ holds the page's code
and the peers' npm pins (installed with --ignore-scripts).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llama import build_llama, for_llama, gguf, run, sentencepiece_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PEERS_JS = ROOT / "benchmarks" / "browser_peers"
WORK = ROOT / "out" / "peers"
SITE = WORK / "site"
VENV = WORK / "venv"
PROMPT, DECODE = 128, 32
FORMATS = ("f16", "q8", "q4")
# what the peers' virtual environment holds (transformers < 4.58 for optimum-onnx 0.1.0's qwen3_moe export)
PEER_PACKAGES = ["torch==2.13.0", "transformers==4.57.*", "optimum-onnx==0.1.0", "optimum==2.1.*", "onnx", "onnx_ir",
                 "onnxruntime", "onnxslim", "sentencepiece", "protobuf", "safetensors", "numpy"]

CHECKPOINT_SCRIPT = """
import sys, torch, transformers as T
out = sys.argv[1]
config = T.Qwen3MoeConfig(vocab_size=512, hidden_size=1024, moe_intermediate_size=256, intermediate_size=256,
    num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4, head_dim=64, num_experts=8,
    num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
    max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
T.Qwen3MoeForCausalLM(config).to(torch.float16).save_pretrained(out)
"""

# ONNX for transformers.js: the exported fp32 graph and its quantised siblings under onnx/, the names
# transformers.js reads for dtype fp32, fp16, q8 and q4
ONNX_VARIANTS_SCRIPT = """
import shutil, sys
from pathlib import Path
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from onnxruntime.transformers.float16 import convert_float_to_float16
src, out = Path(sys.argv[1]), Path(sys.argv[2])
(out / "onnx").mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.suffix != ".onnx":
        shutil.copy(f, out / f.name)
shutil.copy(src / "model.onnx", out / "onnx" / "model.onnx")
quantize_dynamic(str(src / "model.onnx"), str(out / "onnx" / "model_quantized.onnx"), weight_type=QuantType.QUInt8)
q4 = MatMulNBitsQuantizer(onnx.load(str(src / "model.onnx")), block_size=32, is_symmetric=True)
q4.process()
q4.model.save_model_to_file(str(out / "onnx" / "model_q4.onnx"), False)
onnx.save(convert_float_to_float16(onnx.load(str(src / "model.onnx")), keep_io_types=True),
          str(out / "onnx" / "model_fp16.onnx"))
"""

# the same model's logits from the exported ONNX graph and from transformers: the export is checked first
ONNX_CHECK_SCRIPT = """
import sys
import numpy as np, onnxruntime as ort, torch, transformers as T
onnx_path, ckpt = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
ids = np.random.default_rng(0).integers(3, 512, size=(1, 21)).astype(np.int64)
feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(21)[None]}
for i in session.get_inputs():
    if i.name.startswith("past_key_values"):
        feed[i.name] = np.zeros((1, 4, 0, 64), np.float32)
got = session.run(["logits"], feed)[0][0]
with torch.no_grad():
    want = T.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)(torch.tensor(ids)).logits[0].numpy()
print(float(np.abs(got - want).max() / np.abs(want).max()))
"""


def peer_python() -> Path:
    if not (VENV / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", VENV])
        run([VENV / "bin" / "pip", "install", "-q", *PEER_PACKAGES])
    return VENV / "bin" / "python"


def checkpoint() -> Path:
    ckpt = WORK / "qwen3moe-bench"
    if not (ckpt / "tokenizer.json").exists():
        py = peer_python()
        run([py, "-c", CHECKPOINT_SCRIPT, ckpt])
        sentencepiece_tokenizer(ckpt)
        run([py, "-c", "import sys, transformers as T; T.LlamaTokenizerFast.from_pretrained(sys.argv[1])"
                       ".save_pretrained(sys.argv[1])", ckpt])
    return ckpt


def convert_all(ckpt: Path, formats: list[str], peers: Path) -> None:
    for fmt in formats:                                    # webmoe
        pkg = SITE / "models" / "webmoe" / fmt
        if not (pkg / "manifest.json").exists():
            run([sys.executable, "-m", "webmoe", "convert", ckpt, pkg, "--dtype", fmt], stdout=subprocess.DEVNULL)
    onnx_dir = SITE / "models" / "onnx" / "qwen3moe-bench"    # transformers.js
    if not (onnx_dir / "onnx" / "model_fp16.onnx").exists():
        exported = WORK / "onnx-fp32"
        run([VENV / "bin" / "optimum-cli", "export", "onnx", "--model", ckpt, "--task", "text-generation-with-past",
             "--dtype", "fp32", exported], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        error = float(run([peer_python(), "-c", ONNX_CHECK_SCRIPT, exported / "model.onnx", ckpt],
                          capture_output=True, text=True).stdout.split()[-1])
        print(f"ONNX export: logits within {error:.1e} of transformers' (relative to the largest)")
        if error > 1e-4:
            sys.exit("the ONNX export does not compute the model: its figures would mean nothing")
        run([peer_python(), "-c", ONNX_VARIANTS_SCRIPT, exported, onnx_dir], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    llama = build_llama(peers)                             # wllama
    for fmt in formats:
        target = SITE / "models" / "gguf" / f"{fmt}.gguf"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(gguf(llama, for_llama(ckpt, WORK), fmt, WORK), target)   # read with a SentencePiece model


def build_page() -> None:
    """The harness bundled with the peers' npm packages, their wasm files, and the page."""
    if not (PEERS_JS / "node_modules").exists():
        run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=PEERS_JS)
    run([PEERS_JS / "node_modules" / ".bin" / "esbuild", PEERS_JS / "harness.js", "--bundle", "--format=esm",
         "--platform=browser", "--external:/web/*", f"--outfile={SITE / 'harness.js'}", "--log-level=error"])
    ort = PEERS_JS / "node_modules" / "onnxruntime-web" / "dist"
    (SITE / "ort").mkdir(parents=True, exist_ok=True)
    for f in ("ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"):
        shutil.copy(ort / f, SITE / "ort" / f)
    (SITE / "wllama").mkdir(exist_ok=True)
    shutil.copy(PEERS_JS / "node_modules" / "@wllama" / "wllama" / "esm" / "wasm" / "wllama.wasm", SITE / "wllama")
    (SITE / "index.html").write_text('<!doctype html><meta charset="utf-8"><title>peers</title>'
                                     '<script type="module" src="/harness.js"></script>')


def isolated_site() -> web.Application:
    """The site, webmoe's build under /web/dist, and the headers that make the page cross-origin isolated
    (SharedArrayBuffer, so the wasm engines get threads)."""
    @web.middleware
    async def isolate(request, handler):
        resp = await handler(request)
        resp.headers.update({"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                             "Cross-Origin-Resource-Policy": "same-origin"})
        return resp

    async def index(request):
        return web.FileResponse(SITE / "index.html")

    app = web.Application(middlewares=[isolate])
    app.router.add_get("/", index)
    app.router.add_static("/web/dist", ROOT / "web" / "dist")
    app.router.add_static("/", SITE)
    return app


class PeakMemory:
    """The largest sum of resident memory of this process's descendants (the browser's processes; the
    Playwright driver, a Node process, is left out), sampled every 100 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, browser_rss())


def browser_rss() -> int:
    parents, rss, names = {}, {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            status = (d / "status").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        parents[int(d.name)], names[int(d.name)] = int(rest[1]), name
        rss[int(d.name)] = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                                 if line.startswith("VmRSS:")), 0)
    mine = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                changed = True
    return sum(rss[p] for p in mine if p != os.getpid() and "chrom" in names[p].lower())


def measure(url: str, engine: str, fmt: str, device: str, prompt: tuple[list[int], str]) -> dict:
    """A cold load in a fresh profile, then a load from the engine's cache and a generation in a second page."""
    from webmoe.tools.headless import CHROMIUM, FLAGS, playwright
    args = {"engine": engine, "format": fmt, "device": device, "ids": prompt[0], "text": prompt[1]}
    with tempfile.TemporaryDirectory() as profile, PeakMemory() as memory:
        ctx = playwright().chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                              args=FLAGS)
        try:
            results = []
            for decode in (0, DECODE):                  # the cold load alone, then from the cache and run
                page = ctx.new_page()
                page.goto(url + "/")
                page.wait_for_function("window.harnessReady === true", timeout=60_000)
                results.append(page.evaluate("(args) => window.runEngine(args)", {**args, "decode": decode}))
                page.close()
                if "error" in results[-1]:
                    break
        finally:
            ctx.close()
    cold, warm = results[0], results[-1]
    if "error" in cold or "error" in warm:
        return {"error": (cold.get("error") or warm.get("error"))[:300]}
    return {"cold": cold["loadSeconds"], "warm": warm["loadSeconds"], "prompt": warm["promptTokens"],
            "prefill": warm["promptTokens"] / warm["prefillSeconds"],
            "decode": warm["decodeTokens"] / warm["decodeSeconds"], "backend": warm["backend"],
            "memory": memory.peak / 2**20}


# each engine's runs: (format, the device it is asked for). wllama is asked for its WebGPU backend, which
# llama.cpp registers only on adapters with shader-f16: here its CPU backend runs, and the table says so
# transformers.js runs fp16 models on WebGPU only with shader-f16 ("The device (webgpu) does not support
# fp16"): its f16 row is its fp32 model ("f32" below), on both backends
PLAN = {
    "webmoe": [(f, "webgpu") for f in FORMATS],
    "transformers.js": [(f if f != "f16" else "f32", d) for f in FORMATS for d in ("webgpu", "wasm")],
    "wllama": [(f, "webgpu") for f in FORMATS],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default=",".join(PLAN), help="engines to measure")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--peers", type=Path, default=Path(os.environ.get("PEERS", "/tmp/webmoe-peers")))
    a = ap.parse_args()
    formats = a.formats.split(",")
    ckpt = checkpoint()
    convert_all(ckpt, formats, a.peers)
    build_page()
    prompt = prompt_of(ckpt)
    runs = [(e, f, d) for e in a.only.split(",") for f, d in PLAN[e] if f in formats or (f == "f32" and "f16" in formats)]
    results: dict = {r: [] for r in runs}
    from webmoe.tools.headless import serving
    with serving(isolated_site()) as url:
        for rep in range(a.reps):
            for r in (runs if rep % 2 == 0 else runs[::-1]):       # alternate the order between repetitions
                out = measure(url, *r, prompt)
                print(r, json.dumps(out), file=sys.stderr, flush=True)
                results[r].append(out)
    (WORK / "results.json").write_text(json.dumps([[list(k), v] for k, v in results.items()], indent=1))
    table(results, a.reps)
    return 0


def prompt_of(ckpt: Path) -> tuple[list[int], str]:
    """The prompt: English from the project's README cut where the checkpoint's SentencePiece tokenizer makes
    PROMPT tokens of it (with its BOS), as ids and as text (wllama takes only text; llama.cpp's tokenizer
    reads the same SentencePiece vocabulary, and the table shows how many tokens it made)."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    words = (ROOT / "README.md").read_text().split()
    for n in range(1, len(words)):
        text = " ".join(words[:n])
        ids = tok.encode(text).ids
        if len(ids) >= PROMPT:
            return ids[:PROMPT], tok.decode(ids[1:PROMPT])
    raise SystemExit("README.md is too short for the prompt")


def table(results: dict, reps: int) -> None:
    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"\nQwen3-MoE 72 M, headless Chromium {chromium_version()}, prefill of a {PROMPT}-token prompt, decode of "
          f"{DECODE}; medians of {reps} (cold load: nothing cached; the rest in a second page, from the cache)")
    print("| engine | format | backend | cold load s | cached load s | prefill tok/s | decode tok/s | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for (engine, fmt, device), runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            print(f"| {engine} | {fmt} | {device}: does not run ({runs[0]['error']}) | | | | | |")
            continue
        line = (engine, fmt, good[0]["backend"], med(good, "cold"), med(good, "warm"), med(good, "prefill"),
                med(good, "decode"), med(good, "memory"))
        rows[(engine, fmt, device)] = line
        print("| {} | {} | {} | {:.2f} | {:.2f} | {:.1f} | {:.2f} | {:.0f} |".format(*line))
    print("\nwebmoe's prefill / decode over the fastest peer of the same format, on the same adapter (WebGPU) and on any "
          "backend:")
    for (engine, fmt, _), line in rows.items():
        if engine != "webmoe":
            continue
        peers = [(p, l) for (p, f, _), l in rows.items() if p != "webmoe" and (f == fmt or (f, fmt) == ("f32", "f16"))]
        for what, chosen in (("WebGPU", [pl for pl in peers if "WebGPU" in pl[1][2]]), ("any backend", peers)):
            if chosen:
                fast_p = max(chosen, key=lambda pl: pl[1][5])
                fast_d = max(chosen, key=lambda pl: pl[1][6])
                print(f"  {fmt}, {what}: prefill {line[5] / fast_p[1][5]:.2f}x ({fast_p[0]}), "
                      f"decode {line[6] / fast_d[1][6]:.2f}x ({fast_d[0]})")


def chromium_version() -> str:
    from webmoe.tools.headless import CHROMIUM
    return subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.split()[1]


if __name__ == "__main__":
    sys.exit(main())
