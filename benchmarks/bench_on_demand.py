"""Experts on demand against the full download, in headless Chromium, over a slow network: the package is
served by `webmoe serve` behind a middleware that sends shards at a fixed rate, and each run starts with
an empty browser profile (nothing in OPFS).

    .venv/bin/python benchmarks/bench_on_demand.py [PACKAGE] [--rates 2,8] [--tokens 16]

Prints, per rate and mode (full download; experts on demand; on demand with the next layer's predicted
experts fetched while the current one runs): time to load, time to the first token (from the start of the
load), decode tokens/s after it, and the shard bytes the server sent.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from webmoe.serve.server import create_app
from webmoe.tools.headless import Throttle, browser, serving

ROOT = Path(__file__).resolve().parent.parent

PAGE = """async ([manifest, options, tokens]) => {
  const t0 = performance.now();
  const webmoe = await import('/web/dist/standalone/webmoe.js');
  const e = await webmoe.load(manifest, options);
  const loaded = performance.now();
  let first = 0, n = 0;
  for await (const t of e.generate('ROMEO. What light', {maxNewTokens: tokens, temperature: 0})) {
    if (n++ === 0) first = performance.now();
  }
  const end = performance.now();
  return {load_s: (loaded - t0) / 1000, ttft_s: (first - t0) / 1000,
          decode: n > 1 ? (n - 1) / ((end - first) / 1000) : 0, adapter: e.adapter,
          network: (await e.expertStats()).tiers.network};
}"""


MODES = {"full download": {},
         "experts on demand": {"expertsOnDemand": True, "prefetch": False},
         "on demand + prefetch": {"expertsOnDemand": True, "prefetch": True}}


def run(pkg: Path, rate: float, options: dict, tokens: int) -> dict:
    throttle = Throttle(rate)
    app = create_app([pkg], api=False)
    app.middlewares.append(throttle.middleware)
    with serving(app) as url, browser() as ctx:
        page = ctx.new_page()
        page.goto(url + "/")
        r = page.evaluate(PAGE, [f"/models/{pkg.name}/manifest.json", options, tokens])
    return {**r, "bytes": throttle.sent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", type=Path, default=ROOT / "demo" / "shakespeare-moe")
    ap.add_argument("--rates", default="2,8", help="MB/s the server sends shards at")
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        for mode, options in MODES.items():
            r = run(args.package.resolve(), rate * 1e6, options, args.tokens)
            rows.append({"rate": rate, "mode": mode, **r})
            print(rows[-1], file=sys.stderr)
    print(f"{args.package.name} in headless Chromium ({rows[0]['adapter']}), {args.tokens} greedy tokens; "
          f"{platform.machine()}")
    print("| shards served at | mode | shard MB sent | load s | first token s | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rate']:g} MB/s | {r['mode']} | {r['bytes'] / 1e6:.2f} | {r['load_s']:.1f} | {r['ttft_s']:.1f} | "
              f"{r['decode']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
