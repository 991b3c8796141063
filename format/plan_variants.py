"""A plan's steps for one class of adapter. A package's plan states the forward pass once, its steps with
the workgroup geometry GPUs run fastest (converter/plan.py's GEOMETRY). `variants` states, for each other
class of adapter, the steps whose constants and dispatch differ there: "cpu", the adapters that run WebGPU
on the processor (lavapipe, SwiftShader, WARP: WebGPU's fallback adapters), with CPU_GEOMETRY's lane rows.
Nothing else may differ (the same kernels, bindings and parameters): a variant changes how the work is cut
into workgroups, never what is computed. web/plan_variants.js is the twin."""
from __future__ import annotations

ADAPTER_CLASSES = ("gpu", "cpu")       # "gpu": the plan's own steps
VARIED = ("consts", "dispatch")        # what a variant may change in a step


def step_variants(steps: list[dict], other: list[dict]) -> dict[str, dict]:
    """{step index: {consts, dispatch}} for the steps of `other` that differ from `steps` (the same plan built
    with another geometry); raises ValueError where they differ in anything else."""
    if len(steps) != len(other):
        raise ValueError(f"a variant has {len(other)} steps, the plan {len(steps)}")
    out = {}
    for i, (a, b) in enumerate(zip(steps, other)):
        rest_a, rest_b = ({k: v for k, v in s.items() if k not in VARIED} for s in (a, b))
        if rest_a != rest_b:
            raise ValueError(f"step {i} ({a.get('label') or a['kernel']}) differs in more than its geometry")
        diff = {k: b[k] for k in VARIED if a[k] != b[k]}
        if diff:
            out[str(i)] = diff
    return out


def plan_for(plan: dict, adapter_class: str) -> dict:
    """The plan an adapter of this class runs: the steps with the class's variant applied, without the
    variants. A plan without variants (packages converted before they existed) runs as it is."""
    if adapter_class not in ADAPTER_CLASSES:
        raise ValueError(f"adapter class {adapter_class!r} is none of {', '.join(ADAPTER_CLASSES)}")
    changed = plan.get("variants", {}).get(adapter_class, {})
    steps = [{**s, **changed[str(i)]} if str(i) in changed else s for i, s in enumerate(plan["steps"])]
    return {**{k: v for k, v in plan.items() if k != "variants"}, "steps": steps}
