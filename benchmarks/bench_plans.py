"""Two plans of one model side by side, natively (lavapipe) and in headless Chromium (SwiftShader): what a
change to the plan's steps (fusing kernels) buys in dispatches per decoded token and in tokens/s.

    .venv/bin/python benchmarks/bench_plans.py OLD_PACKAGE NEW_PACKAGE [--rounds 3] [--prompt 128] [--tokens 32]
        [--adapters native,browser]

The packages must hold the same model (for example one converted before a plan change and one after, from
the same checkpoint). A package given as PATH:gpu or PATH:cpu runs that class's steps of its plan
(format/plan_variants.py; default: the adapter's own), so `PKG:gpu PKG:cpu` compares a plan's two
geometries on one adapter. `--adapters native` leaves Chromium out (a machine without it, such as a
GPU server). Each round measures every package on both adapters with `webmoe speed`'s measurement
(speed.measure natively, web/speed.js in Chromium: random token ids decoded one at a time from an empty
cache, after a warm-up), the packages' order alternating from round to round; prints each round and the
medians with their spread and the new plan's ratio of medians. Dispatches per token are counted from the
plan: the steps a decode pass (T = 1, greedy, no mask) dispatches, each `repeat` times.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

from webmoe.format.expr import evaluate
from webmoe.format.plan_variants import ADAPTER_CLASSES
from webmoe.tools.bench_browser import speed_browser
from webmoe.tools.speed import measure


def dispatches_per_token(package: Path) -> tuple[int, int]:
    """(plan steps, dispatches) of one decoded token, the sampler's included."""
    m = json.loads((package / "manifest.json").read_text())
    env = {"T": 1, "logit_row0": 0, "n_logits": 1, "masked": 0, "sampling": 0, "bank_experts": m["moe"]["num_experts"],
           "temperature": 0, "top_p": 1, "u": 0}
    steps = m["plan"]["steps"] + m["plan"]["sampler"]
    run = [s for s in steps if min(evaluate(d, env) for d in s["dispatch"]) > 0]
    return len(m["plan"]["steps"]), sum(s.get("repeat", 1) for s in run)


class PlanArg(NamedTuple):
    path: Path
    cls: str | None         # the plan variant to run; None: the adapter's own

    @property
    def name(self) -> str:
        return self.path.name + (f":{self.cls}" if self.cls else "")


def package_arg(text: str) -> PlanArg:
    for cls in ADAPTER_CLASSES:
        if text.endswith(":" + cls):
            return PlanArg(Path(text[:-len(cls) - 1]), cls)
    return PlanArg(Path(text), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("packages", nargs=2, type=package_arg, help="PATH, or PATH:gpu / PATH:cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--adapters", default="native,browser")
    args = ap.parse_args()
    runtimes = {"native": lambda p: measure(p.path, args.prompt, args.tokens, repeats=1, adapter_class=p.cls),
                "Chromium": lambda p: speed_browser(p.path, args.prompt, args.tokens, repeats=1, adapter_class=p.cls)}
    runtimes = {rt: run for rt, run in runtimes.items()
                if {"native": "native", "Chromium": "browser"}[rt] in args.adapters.split(",")}
    figures = {(p, rt): {"prefill": [], "decode": []} for p in args.packages for rt in runtimes}
    adapters = {}
    for r in range(args.rounds):
        order = args.packages if r % 2 == 0 else args.packages[::-1]
        for rt, run in runtimes.items():
            for p in order:
                out = run(p)
                adapters[rt] = out["adapter"]
                for phase in ("prefill", "decode"):
                    figures[p, rt][phase].append(out[phase]["median"])
                print(f"round {r + 1} {rt:8s} {p.name:28s} prefill {out['prefill']['median']:8.2f} "
                      f"decode {out['decode']['median']:7.2f} tokens/s", flush=True)
    print(f"\nmedians of {args.rounds} rounds (min-max); adapters: " + "; ".join(f"{k}: {v}" for k, v in adapters.items()))
    print(f"{'package':28s} {'steps':>6s} {'dispatches/token':>17s}  " +
          "  ".join(f"{rt + ' ' + ph:>28s}" for rt in runtimes for ph in ("prefill", "decode")))
    med = {}
    for p in args.packages:
        steps, dispatches = dispatches_per_token(p.path)
        cells = []
        for rt in runtimes:
            for ph in ("prefill", "decode"):
                v = figures[p, rt][ph]
                med[p, rt, ph] = statistics.median(v)
                cells.append(f"{med[p, rt, ph]:9.2f} ({min(v):.2f}-{max(v):.2f})".rjust(28))
        print(f"{p.name:28s} {steps:6d} {dispatches:17d}  " + "  ".join(cells))
    old, new = args.packages
    print(f"{'new / old':28s} {'':6s} {'':17s}  " + "  ".join(
        f"{med[new, rt, ph] / med[old, rt, ph]:9.2f}x".rjust(28) for rt in runtimes for ph in ("prefill", "decode")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
