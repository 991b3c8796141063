"""Prefetch for the expert cache: predicts the experts of the next MoE layer by applying that layer's
router to the current layer's router input, so they can be loaded before they are asked for.

The predictor is built from the plan's MoE layer records: for each MoE layer L followed by a MoE layer
L', it copies L''s router-logits and router steps, feeding them L's router input and writing to its own
buffers: pred_logits, pred_ids and pred_w, and a pred_ copy of any other plan buffer the router step binds
besides the pass's inputs (a router that also sorts the pairs by expert, GATHER, writes three more). No
family knowledge and no change to packages are needed. web/prefetch.js is the twin."""
from __future__ import annotations

import copy


def predictor_plan(plan: dict, num_experts: int, top_k: int):
    """-> (a plan of predictor steps, {layer L: (first step, stop step, predicted layer L')})."""
    steps, layers = plan["steps"], plan["moe_layers"]
    out = {"buffers": {"pred_logits": {"shape": ["T", num_experts], "dtype": "f32"},
                       "pred_ids": {"shape": ["T", top_k], "dtype": "u32"},
                       "pred_w": {"shape": ["T", top_k], "dtype": "f32"}}, "steps": []}
    ranges = {}
    for rec, nxt in zip(layers, layers[1:]):
        matmul, router = copy.deepcopy(steps[nxt["router_logits_step"]]), copy.deepcopy(steps[nxt["router_step"]])
        matmul["bind"].update(x=rec["router_input"], y="pred_logits")
        router["bind"].update(logits="pred_logits", topk_ids="pred_ids", topk_w="pred_w")
        for var, target in router["bind"].items():
            if target in plan["buffers"] and target not in plan["io"].values():
                out["buffers"]["pred_" + target] = plan["buffers"][target]
                router["bind"][var] = "pred_" + target
        matmul["label"], router["label"] = f"predict L{nxt['layer']} logits", f"predict L{nxt['layer']} router"
        ranges[rec["layer"]] = (len(out["steps"]), len(out["steps"]) + 2, nxt["layer"])
        out["steps"] += [matmul, router]
    return out, ranges
