"""Prefetch for the expert cache: predicts the experts of the next MoE layer by applying that layer's
router to the current layer's router input, so they can be loaded before they are asked for.

The predictor is built from the plan alone: for each MoE layer L followed by a MoE layer L', it copies
L''s router-logits matmul and router steps, feeding them L's router input and writing to its own
buffers. No family knowledge and no change to packages are needed."""
from __future__ import annotations

import copy

from .expert_cache import Segment


def _router_steps(steps: list[dict], before: int) -> tuple[dict, dict]:
    """The router step last before `before`, and the matmul that writes its logits."""
    r = next(i for i in range(before - 1, -1, -1) if steps[i]["kernel"] == "router")
    logits = steps[r]["bind"]["logits"]
    m = next(i for i in range(r - 1, -1, -1) if steps[i]["kernel"] == "matmul" and steps[i]["bind"]["y"] == logits)
    return steps[m], steps[r]


def predictor_plan(plan: dict, segments: list[Segment], num_experts: int, top_k: int):
    """-> (a plan of predictor steps, {layer L: (first step, stop step, predicted layer L')})."""
    steps = plan["steps"]
    routers = {seg.layer: _router_steps(steps, seg.start) for seg in segments}
    out = {"buffers": {"pred_logits": {"shape": ["T", num_experts], "dtype": "f32"},
                       "pred_ids": {"shape": ["T", top_k], "dtype": "u32"},
                       "pred_w": {"shape": ["T", top_k], "dtype": "f32"}}, "steps": []}
    ranges = {}
    for seg, nxt in zip(segments, segments[1:]):
        matmul, router = (copy.deepcopy(s) for s in routers[nxt.layer])
        matmul["bind"].update(x=routers[seg.layer][0]["bind"]["x"], y="pred_logits")
        router["bind"].update(logits="pred_logits", topk_ids="pred_ids", topk_w="pred_w")
        matmul["label"], router["label"] = f"predict L{nxt.layer} logits", f"predict L{nxt.layer} router"
        ranges[seg.layer] = (len(out["steps"]), len(out["steps"]) + 2, nxt.layer)
        out["steps"] += [matmul, router]
    return out, ranges
