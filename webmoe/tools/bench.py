"""`webmoe bench`: decode speed and expert-cache behaviour of a package under several GPU budgets for
its routed experts, measured in one run so the figures compare. The baseline is the run with every
expert resident; each budget's speed is also given as a ratio to it. Every budget is measured `repeats`
times, round after round, after one discarded warm-up run, and its speed is the median with the spread.
Prints a table; can save a PNG."""
from __future__ import annotations

import statistics
import time

import numpy as np

from webmoe.engine.engine import Engine
from webmoe.engine.generation import GREEDY
from webmoe.engine.package import Package

PROMPT_TOKENS = 32


def run_budget(path, budget: int | None, tokens: int, adapter: str | None, prefetch: bool = False,
               seed: int = 0) -> dict:
    engine = Engine.load(path, adapter=adapter, expert_cache_bytes=budget, prefetch=prefetch)
    cache = engine.experts
    prompt = np.random.default_rng(seed).integers(0, engine.vocab_size, PROMPT_TOKENS).tolist()
    t0 = time.perf_counter()
    engine.prefill(0, prompt, 0)                      # prefill, and the first token
    prefill_s = time.perf_counter() - t0
    before = cache.report()["total"]
    token = 0
    t0 = time.perf_counter()
    for i in range(tokens):
        [token] = engine.decode([(token, len(prompt) + i, 0)], [GREEDY])
    decode_s = time.perf_counter() - t0
    after = cache.report()["total"]
    lookups = after["lookups"] - before["lookups"]
    hits = after["hits"] - before["hits"]
    predicted = after["predicted"] - before["predicted"]
    used = after["predicted_used"] - before["predicted_used"]
    needed = after["needed_after_prediction"] - before["needed_after_prediction"]
    return {"slots": cache.capacity, "experts": len(cache.moe_layers) * cache.num_experts,
            "budget_mib": cache.n_slots * cache.slot_bytes / 2**20, "prefill_s": prefill_s,
            "tokens_per_s": tokens / decode_s,
            "hit_rate": hits / lookups if lookups else 1.0,
            "bytes_per_token": (after["bytes_uploaded"] - before["bytes_uploaded"]) / tokens,
            "wait_share": (after["wait_s"] - before["wait_s"]) / decode_s, "adapter": engine.adapter,
            "precision": used / predicted if predicted else None, "recall": used / needed if needed else None}


RUNS = ((1.0, False), (0.5, False), (0.5, True), (0.25, False), (0.25, True), (0.0, False))


def budgets(path, runs) -> tuple[int, int, list[tuple[str, int, bool]]]:
    """From the manifest alone: (experts in all, bytes per expert, [(label, budget bytes, prefetch)]) for
    runs of (fraction of all experts held on the GPU, prefetch); fraction 0 means one slot."""
    moe = Package(path).moe
    layout = moe["expert_layout"]
    total, slot = len(moe["moe_layers"]) * moe["num_experts"], layout["expert_bytes"]
    return total, slot, [(("min (1 slot)" if f == 0 else f"{f:.0%}") + (" +prefetch" if prefetch else ""),
                          max(1, int(round(total * f))) * slot, prefetch) for f, prefetch in runs]


def relate_to_first(rows: list[dict]) -> list[dict]:
    """Each run's speed as a ratio to the first (every expert resident)."""
    base = rows[0]["tokens_per_s"] or 1.0
    for r in rows:
        r["speed_vs_all_resident"] = r["tokens_per_s"] / base
    return rows


def in_rounds(plans: list[tuple[str, int, bool]], run_one, repeats: int) -> list[dict]:
    """Each budget of `plans` ([(label, budget bytes, prefetch)]) run `repeats` times by run_one(budget,
    prefetch), round after round so that no budget gets the machine's quiet or busy minutes alone, after
    one warm-up run of the first that is discarded (otherwise the baseline is the run that pays the
    process's first-use costs: compiled pipelines, driver caches). A budget's row: its last run's
    bookkeeping, the median of its speeds and their spread, and the speed relative to the first row's."""
    run_one(plans[0][1], plans[0][2])
    results = [[run_one(budget, prefetch) for _, budget, prefetch in plans] for _ in range(repeats)]
    rows = []
    for i, (label, _, _) in enumerate(plans):
        speeds = sorted(r[i]["tokens_per_s"] for r in results)
        rows.append({**results[-1][i], "label": label, "tokens_per_s": statistics.median(speeds),
                     "tokens_per_s_spread": [speeds[0], speeds[-1]], "repeats": repeats})
    return relate_to_first(rows)


def bench(path, tokens: int = 64, runs=RUNS, adapter: str | None = None, repeats: int = 3) -> list[dict]:
    """runs: (fraction of all experts held on the GPU, prefetch); fraction 0 means one slot."""
    return in_rounds(budgets(path, runs)[2], lambda budget, prefetch: run_budget(path, budget, tokens, adapter, prefetch),
                     repeats)


def table(rows: list[dict]) -> str:
    head = (f"{'budget':<16}{'slots':>10}{'MiB':>9}{'tok/s':>9}{'spread':>14}{'x base':>8}{'hit rate':>10}"
            f"{'KiB up/tok':>12}{'wait':>7}{'precision':>11}{'recall':>8}")
    lines = [head, "-" * len(head)]
    pct = lambda v: f"{v:.0%}" if v is not None else "-"   # noqa: E731
    for r in rows:
        spread = "{:.1f}-{:.1f}".format(*r["tokens_per_s_spread"])
        lines.append(f"{r['label']:<16}{r['slots']:>5}/{r['experts']:<4}{r['budget_mib']:>9.2f}{r['tokens_per_s']:>9.1f}"
                     f"{spread:>14}{r['speed_vs_all_resident']:>8.2f}{r['hit_rate']:>10.1%}{r['bytes_per_token'] / 1024:>12.1f}"
                     f"{r['wait_share']:>7.0%}{pct(r['precision']):>11}{pct(r['recall']):>8}")
    return "\n".join(lines)


def save_png(rows: list[dict], path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [r["label"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8))
    a.bar(labels, [r["tokens_per_s"] for r in rows], color="#3b6ea5")
    a.set_ylabel("decode tokens/s")
    b.bar(labels, [r["hit_rate"] * 100 for r in rows], color="#6aa84f")
    b.set_ylabel("expert cache hit rate (%)")
    b.set_ylim(0, 100)
    for ax in (a, b):
        ax.set_xlabel("GPU budget for routed experts")
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
