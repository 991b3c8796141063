"""What `webmoe info` prints: sizes and parameter counts from the manifest alone."""
from __future__ import annotations

import math

from webmoe.engine.package import Package
from webmoe.engine.resources import plan_bytes


def parameter_counts(m: dict) -> dict[str, int]:
    """Weights of a manifest's model: per routed expert, dense (embeddings included), in all, per token."""
    moe, cfg = m["moe"], m["config"]
    H, I = cfg["hidden_size"], moe["intermediate_size"]
    expert = 3 * I * H + ((2 * I + H) if "gate_bias" in moe["expert_layout"] else 0)
    dense = sum(math.prod(t["shape"]) for n, t in m["tensors"].items() if not n.startswith("rope."))
    n_moe = len(moe["moe_layers"])
    return {"expert": expert, "dense": dense, "total": dense + n_moe * moe["num_experts"] * expert,
            "active": dense + n_moe * moe["top_k"] * expert}


def summarize(package: Package) -> dict[str, str]:
    m = package.manifest
    moe, cfg = m["moe"], m["config"]
    layout = moe["expert_layout"]
    counts = parameter_counts(m)
    expert_params, dense_params, total, active = counts["expert"], counts["dense"], counts["total"], counts["active"]
    n_moe = len(moe["moe_layers"])
    dense_bytes = sum(s["size"] for s in m["shards"] if s["kind"] == "dense")
    package_bytes = dense_bytes + sum(s["size"] for s in m["shards"] if s["kind"] == "expert")
    dense_layers = [l for l in range(cfg["num_layers"]) if l not in moe["moe_layers"]]
    shared = moe.get("shared_expert_intermediate_size") or 0
    kv = plan_bytes(m["plan"], 0, 0)["kv_per_token"]
    return {
        "family": f"{m['family']} ({m.get('architecture')})",
        "layers": f"{cfg['num_layers']} ({n_moe} MoE; dense: {_layers(dense_layers)})",
        "hidden size": str(cfg["hidden_size"]),
        "attention": f"{cfg['num_heads']} heads, {cfg['num_kv_heads']} KV heads"
                     + (f", sliding window {cfg['sliding_window']}" if cfg.get("sliding_window") else "")
                     + f", RoPE {cfg.get('rope_type', 'default')}",
        "experts": f"{moe['num_experts']} per layer, top-{moe['top_k']}, intermediate {moe['intermediate_size']}",
        "router": _router(moe),
        "shared experts": f"intermediate {shared}" + (" (sigmoid-gated)" if moe.get("shared_expert_gate") else "")
                          if shared else "none",
        "total parameters": _count(total),
        "active parameters": f"{_count(active)} per token (embeddings included)",
        "weight formats": f"--dtype {m['dtype']}: " + ", ".join(f"{part} {fmt}" for part, fmt in m["dtypes"].items()),
        "bytes per expert": _bytes(layout["expert_bytes"])
                            + f" ({_bits(layout['expert_bytes'], expert_params)} per weight"
                            + (f"; {layout['pieces']} pieces of {layout['piece_rows']} intermediate rows)"
                               if layout["pieces"] > 1 else ")"),
        "dense bytes": f"{_bytes(dense_bytes)} ({_bits(dense_bytes, dense_params)} per weight)",
        "package bytes": f"{_bytes(package_bytes)} ({_bits(package_bytes, total)} per weight)",
        "bindings": _bindings(m["plan"]),
        "KV cache": f"{_bytes(kv)} per token ({_bytes(kv * 4096)} for 4096 tokens)",
        "shards": f"{len(m['shards'])} ({sum(s['kind'] == 'expert' for s in m['shards'])} expert)",
        "manifest sha256": f"{m['manifest_sha256']} (pin it: Engine.load(path, digest=...))",
    }


def _bits(nbytes: int, params: int) -> str:
    """Bits per weight, padding and the f32 norms, biases and routers included."""
    return f"{8 * nbytes / max(params, 1):.2f} bits"


def _bindings(plan: dict) -> str:
    r = plan["resources"]
    split = plan["splits"]
    what = f"{len(split)} tensors split by rows" if split else "no tensor split"
    return (f"every binding at most {_bytes(r['max_binding'])} ({what}; largest part {_bytes(r['largest_tensor']['bytes'])}, "
            f"expert slot {_bytes(r['experts']['slot_bytes'])})")


def _router(moe: dict) -> str:
    kind = moe["scoring"]
    if kind == "sigmoid_grouped":
        kind = f"sigmoid + correction bias, best {moe['topk_group']} of {moe['n_group']} groups"
    elif kind == "sparsemixer":
        kind = f"sparsemixer (threshold {moe['jitter_eps']})"
    parts = [kind, "renormalised" if moe["norm_topk_prob"] else "not renormalised"]
    if moe.get("routed_scaling_factor", 1.0) != 1.0:
        parts.append(f"scaled x{moe['routed_scaling_factor']}")
    return ", ".join(parts)


def _layers(ids: list[int]) -> str:
    return ", ".join(map(str, ids)) if ids else "none"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return str(n)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
