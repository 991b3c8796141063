"""`webmoe analyze`: which experts each layer routes tokens to over a set of prompts, and which experts
are chosen together, exported as JSON and drawn as a heatmap."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from webmoe.engine.engine import Engine


def analyze(path, prompts: list[str], max_new_tokens: int = 32, adapter: str | None = None) -> dict:
    engine = Engine.load(path, adapter=adapter, observe_routing=True)
    tokens = 0
    for prompt in prompts:
        generated = sum(1 for _ in engine.generate(prompt, max_new_tokens=max_new_tokens, temperature=0))
        # tokens routed: the prompt and every generated token but the last (sampled, never run)
        tokens += len(engine.tokenizer.prompt_ids(prompt)) + max(0, generated - 1)
    cache = engine.experts
    layers = {}
    for l in cache.moe_layers:
        usage = cache.usage[l]
        share = usage / max(1, usage.sum())
        layers[str(l)] = {"usage": usage.tolist(), "share": share.round(6).tolist(),
                          "coactivation": cache.coactivation[l].tolist(),
                          "entropy_bits": float(-(share[share > 0] * np.log2(share[share > 0])).sum())}
    return {"model": str(path), "prompts": len(prompts), "tokens": tokens, "num_experts": cache.num_experts,
            "top_k": engine.package.moe["top_k"], "layers": layers}


def heatmap(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    layers = sorted(report["layers"], key=int)
    share = np.array([report["layers"][l]["share"] for l in layers])            # [layers, E]
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * share.shape[1] + 2), max(2.5, 0.4 * len(layers) + 1.5)))
    im = ax.imshow(share, aspect="auto", cmap="viridis")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(layers)), layers)
    ax.set_title(f"share of routed tokens per expert ({report['tokens']} tokens)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def into_package(report: dict, path) -> str:
    """Writes the report's expert usage into the package's manifest as `routing_stats` (what a browser
    load's `hotExperts` reads) and seals it again; returns the manifest's new sha256. The shards are
    untouched; the manifest is replaced atomically."""
    from webmoe.format.manifest import read_manifest, write_manifest
    target = Path(path) / "manifest.json"
    manifest = read_manifest(target.read_bytes())
    manifest["routing_stats"] = {"prompts": report["prompts"], "tokens": report["tokens"],
                                 "usage": {layer: r["usage"] for layer, r in report["layers"].items()}}
    return write_manifest(target, manifest)


def write(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "routing.json").write_text(json.dumps(report))
    heatmap(report, out_dir / "routing.png")
    return out_dir / "routing.json", out_dir / "routing.png"
