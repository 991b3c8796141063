"""The server under concurrent load, with the official `openai` client: N clients at once each stream one
chat completion; prints aggregate tokens/s and time to first token (p50, p99) for continuous batching
against a server that decodes one request at a time (--max-batch 1, the server before batching), in the
same run.

    .venv/bin/python benchmarks/bench_serving.py [PACKAGE] [--streams 1,4,16,64] [--tokens 32] [--max-batch 16]
"""
from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai

from webmoe.serve.server import create_app
from webmoe.tools.headless import serving

ROOT = Path(__file__).resolve().parent.parent


def load(url: str, model: str, streams: int, tokens: int) -> dict:
    ttft, counts = [None] * streams, [0] * streams
    t0 = time.perf_counter()

    def client(i):
        c = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=3600)
        start = time.perf_counter()
        for ch in c.chat.completions.create(model=model, messages=[{"role": "user", "content": f"Tell me tale {i}"}],
                                            max_tokens=tokens, temperature=0.8, seed=i, stream=True,
                                            stream_options={"include_usage": True}):
            if ch.choices and ch.choices[0].delta.content and ttft[i] is None:
                ttft[i] = time.perf_counter() - start
            if ch.usage:
                counts[i] = ch.usage.completion_tokens
    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    first = np.array([t for t in ttft if t is not None])
    return {"tokens_per_s": sum(counts) / wall, "ttft_p50": float(np.percentile(first, 50)),
            "ttft_p99": float(np.percentile(first, 99)), "tokens": sum(counts), "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", type=Path, default=ROOT / "demo" / "shakespeare-moe")
    ap.add_argument("--streams", default="1,4,16,64")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16)
    args = ap.parse_args()
    pkg = args.package.resolve()
    rows = []
    for streams in (int(s) for s in args.streams.split(",")):
        for batch in (1, args.max_batch):
            app = create_app([pkg], max_batch=batch, admission={"max_waiting": 256, "max_wait_s": 3600})
            with serving(app) as url:
                load(url, pkg.name, 1, 2)                        # loads the engine, compiles the kernels
                r = load(url, pkg.name, streams, args.tokens)
            rows.append({"streams": streams, "max_batch": batch, **r})
            print(rows[-1], file=sys.stderr)
    print(f"{pkg.name}, {args.tokens} sampled tokens per stream, openai client streaming; {platform.machine()}, "
          f"lavapipe unless a GPU is found")
    print("| streams | server | aggregate tok/s | TTFT p50 s | TTFT p99 s | vs one at a time |")
    print("|---|---|---|---|---|---|")
    base = {r["streams"]: r for r in rows if r["max_batch"] == 1}
    for r in rows:
        mode = "one at a time" if r["max_batch"] == 1 else f"batched ({r['max_batch']})"
        ratio = r["tokens_per_s"] / base[r["streams"]]["tokens_per_s"]
        print(f"| {r['streams']} | {mode} | {r['tokens_per_s']:.1f} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} | "
              f"{ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
