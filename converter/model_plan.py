"""A model's plan from its family and config alone, no weights needed: what `convert` writes into the
package, and what the plan snapshot tests and `webmoe info --plan` read."""
from __future__ import annotations

import numpy as np

from webmoe.format.expert_layout import expert_layout
from webmoe.format.plan_variants import step_variants

from .checkpoint import Checkpoint
from .families import family_for
from .families.base import DecoderFamily
from .plan import CPU_GEOMETRY, DEFAULT_MAX_BINDING, Plan
from .weight_dtypes import weight_dtypes


def storage_dtype(shape: tuple[int, ...], keep_f32: bool, dtype: str) -> str:
    """Matrices are stored in their part's format; norms, biases, routers and gates stay f32."""
    return dtype if len(shape) == 2 and not keep_f32 else "f32"


def package_tensors(family: DecoderFamily, ckpt: Checkpoint | None,
                    dtypes: dict[str, str]) -> dict[str, tuple[tuple, str]]:
    """Every dense tensor the plan reads: name -> (shape, storage format), before the plan splits the
    ones larger than a binding into row parts (plan["splits"]). dtypes: {part: format} (weight_dtypes)."""
    keep_f32 = family.f32_tensors(ckpt)
    parts = family.weight_parts(ckpt)
    joined = family.joined_tensors()
    sources = {src for srcs in joined.values() for src in srcs}
    dense = family.dense_tensors(ckpt)
    out = {}
    for name, shape in dense.items():
        if name in sources:                   # stored inside a joined tensor (below)
            continue
        dtype = dtypes[parts.get(name, "ffn")]
        if not family.transforms(name):
            out[name] = (tuple(shape), storage_dtype(shape, name in keep_f32, dtype))
            continue
        placeholder = np.broadcast_to(np.float32(0), shape)       # shapes only: no memory for the data
        for out_name, array in family.transform_dense(name, placeholder).items():
            out[out_name] = (tuple(array.shape), storage_dtype(array.shape, out_name in keep_f32 or name in keep_f32,
                                                               dtype))
    for name, srcs in joined.items():
        shape = joined_shape([dense[src] for src in srcs])
        out[name] = (shape, storage_dtype(shape, name in keep_f32, dtypes[parts.get(srcs[0], "ffn")]))
    for name, array in family.generated_tensors().items():
        out[name] = (tuple(array.shape), "f32")
    return out


def unjoin(family: DecoderFamily, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
    """A package tensor as the checkpoint tensors it holds: a joined tensor's rows split back into the
    tensors stacked in it (the inverse of DecoderFamily.joined_tensors), any other tensor as it is."""
    sources = family.joined_tensors().get(name)
    if not sources:
        return {name: array}
    dense = family.dense_tensors(None)
    edges = np.cumsum([0] + [dense[src][0] for src in sources])
    return {src: array[lo:hi] for src, lo, hi in zip(sources, edges, edges[1:])}


def joined_shape(shapes: list[tuple]) -> tuple:
    """The shape of tensors stacked by rows (DecoderFamily.joined_tensors)."""
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def build_plan(family: DecoderFamily, ckpt: Checkpoint | None, tensors: dict[str, tuple[tuple, str]],
               expert_dtype: str, geometry: dict | None = None, max_binding: int = DEFAULT_MAX_BINDING) -> dict:
    """The plan's JSON (see plan.py) over the tensors `package_tensors` gives; ckpt=None names tensors
    by their first alias. No tensor part or expert slot it binds exceeds max_binding bytes. Its steps have
    GPUs' geometry; its "cpu" variant the steps that differ with CPU_GEOMETRY (`geometry` overrides both)."""
    layout = expert_layout(family.expert_shapes(), expert_dtype, max_binding)

    def built(geo: dict) -> Plan:
        plan = Plan(tensors, geo, max_binding)
        family.build_plan(plan, ckpt, layout, expert_dtype)
        return plan
    gpu = built(geometry or {})
    cpu = built({k: {**CPU_GEOMETRY.get(k, {}), **(geometry or {}).get(k, {})} for k in {*CPU_GEOMETRY, *(geometry or {})}})
    out = gpu.to_json(layout, len(family.moe.moe_layers) * family.moe.num_experts)
    out["variants"] = {"cpu": step_variants(gpu.steps, cpu.steps)}
    return out


def plan_from_config(config: dict, dtype: str = "f16", max_binding: int = DEFAULT_MAX_BINDING) -> dict:
    """dtype: a preset of weight_dtypes.PRESETS."""
    family = family_for(config)
    dtypes = weight_dtypes(dtype)
    return build_plan(family, None, package_tensors(family, None, dtypes), dtypes["experts"], max_binding=max_binding)
