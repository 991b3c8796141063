"""`webmoe info PACKAGE --plan`: the forward pass as a list of steps a newcomer can read top to bottom.
Each step: its label, kernel (with defines), what it reads and writes with shapes, and its dispatch."""
from __future__ import annotations

from webmoe.engine.shaders import load_kernel


def _expr(e) -> str:
    if isinstance(e, list):
        name, mul, div = e
        s = name if mul == 1 else f"{name}*{mul}"
        return s if div == 1 else f"ceil({s}/{div})"
    return str(e)


def _operand(name: str, plan: dict, tensors: dict) -> str:
    if name in plan["buffers"]:
        b = plan["buffers"][name]
        dtype = "" if b["dtype"] == "f32" else " " + b["dtype"]
        return f"{name}[{', '.join(map(str, b['shape']))}]{dtype}"
    if name in tensors:
        t = tensors[name]
        return f"{name}[{', '.join(map(str, t['shape']))}] {t['dtype']}"
    return f"{name}(runtime)"           # the expert slab and slot table


def _step_line(i, step: dict, plan: dict, tensors: dict) -> list[str]:
    kernel = load_kernel(step["kernel"], step.get("defines", ()), step.get("consts"))
    reads, writes = [], []
    for var, target in step["bind"].items():
        text = f"{var}={_operand(target, plan, tensors)}"
        (writes if kernel.bindings[var].space.endswith("read_write") else reads).append(text)
    defines = f"[{','.join(step['defines'])}]" if step.get("defines") else ""
    dispatch = " x ".join(_expr(d) for d in step["dispatch"])
    if step.get("repeat", 1) != 1:
        dispatch += f", {step['repeat']} times"
    return [f"{i:>4}  {step.get('label') or step['kernel']:<24} {step['kernel']}{defines}  grid {dispatch}",
            f"{'':>30}reads  {'  '.join(reads)}",
            f"{'':>30}writes {'  '.join(writes)}"]


def describe_plan(manifest: dict) -> list[str]:
    plan, tensors = manifest["plan"], manifest["tensors"]
    starts = {r["experts"][0]: r for r in plan["moe_layers"]}
    lines = [f"forward pass of {manifest['family']}: {len(plan['steps'])} steps for T new tokens at position pos "
             f"(KV caches hold S positions); variables: {', '.join(plan['variables'])}",
             f"inputs: token ids in {plan['io']['ids']}; outputs: {plan['io']['logits']} (read back) and the sampled "
             f"token in {plan['io']['token']}"]
    for i, step in enumerate(plan["steps"]):
        if i in starts:
            r = starts[i]
            lines.append(f"      -- MoE layer {r['layer']}: routed by steps {r['router_logits_step']}-{r['router_step']} "
                         f"(chosen experts in {r['topk_ids']}); steps {r['experts'][0]}-{r['experts'][1] - 1} read the "
                         f"expert slab, re-run per batch when experts are paged")
        lines += _step_line(i, step, plan, tensors)
    lines.append("      -- then the sampler, on the logits row of the last token:")
    for j, step in enumerate(plan["sampler"]):
        lines += _step_line(len(plan["steps"]) + j, step, plan, tensors)
    for adapters, changed in plan.get("variants", {}).items():
        lines.append(f"on {adapters} adapters, steps {', '.join(changed)} run with other workgroup shapes and "
                     f"dispatches (the plan's {adapters} variant); the same arithmetic")
    res = plan["resources"]
    big = res["largest_tensor"]
    lines.append(f"resources: dense weights {res['dense_bytes'] / 2**20:.1f} MiB (largest tensor {big['name']}, "
                 f"{big['bytes'] / 2**20:.1f} MiB); {res['experts']['count']} experts of "
                 f"{res['experts']['slot_bytes'] / 2**20:.2f} MiB; activations "
                 f"{sum(b.get('T', 0) for b in res['buffers'].values())} bytes per token of a chunk, KV cache "
                 f"{sum(b.get('S', 0) for b in res['buffers'].values())} bytes per position")
    return lines
