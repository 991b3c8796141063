"""Routing strategies for experiments: the plan's router steps (found by its moe_layers records) run
another rule than the trained one. Every strategy but "model" changes the model's output, and says so.

    model          the trained top-k routing (the default)
    top1           switch routing: the model's first choice alone
    hash           hash routing: expert = hash(token id) mod E, weight 1
    capacity:F     capacity factor F: each expert takes at most ceil(F * T * K / E) (token, slot) pairs of a
                   pass, in token order; a token whose choice is full goes to its next-best expert with room

shaders/router.wgsl implements them (softmax and sigmoid scoring; PhiMoE's sparsemixer and DeepSeek-V3's
grouped choice only route as trained)."""
from __future__ import annotations

import copy
import math

from .errors import OptionError

STRATEGIES = {"model": 0, "top1": 1, "hash": 2, "capacity": 3}


def parse_routing(spec: str) -> tuple[str, float | None]:
    name, _, arg = spec.partition(":")
    if name not in STRATEGIES or (name == "capacity") != bool(arg):
        raise OptionError(f"routing {spec!r}: one of model, top1, hash, capacity:FACTOR")
    if name != "capacity":
        return name, None
    try:
        factor = float(arg)
    except ValueError:
        factor = -1.0
    if not (0 < factor <= 64 and math.isfinite(factor)):
        raise OptionError(f"routing {spec!r}: the capacity factor must be a number in (0, 64]")
    return name, factor


def describe_routing(spec: str) -> str:
    name, factor = parse_routing(spec)
    if name == "model":
        return "the model's trained routing"
    what = {"top1": "top-1 switch routing", "hash": "hash routing"}.get(name) or \
        f"capacity factor {factor:g} with overflow to the next-best expert"
    return f"{what} (changes the model's output)"


def apply_routing(plan: dict, spec: str) -> dict:
    """The plan with every MoE layer's router step set to the strategy (a copy; "model" returns the plan)."""
    name, factor = parse_routing(spec)
    if name == "model":
        return plan
    plan = copy.deepcopy(plan)
    for rec in plan["moe_layers"]:
        step = plan["steps"][rec["router_step"]]
        params = step["params"]
        if params["scoring"] not in (0, 1):
            raise OptionError(f"routing {spec!r} needs softmax or sigmoid router scoring; this model's router "
                              "routes only as trained")
        params["strategy"] = STRATEGIES[name]
        if name == "capacity":      # ceil(factor * T * K / E), as the plan's [var, mul, div] expression
            params["capacity"] = ["T", round(factor * params["K"] * 1000), params["E"] * 1000]
        if name == "hash":
            step["bind"]["ids"] = plan["io"]["ids"]
            step["defines"] = sorted({*step["defines"], "HASH"})
    return plan
