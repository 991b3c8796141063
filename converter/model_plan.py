"""A model's plan from its family and config alone, no weights needed: what `convert` writes into the
package, and what the plan snapshot tests and `webmoe info --plan` read."""
from __future__ import annotations

import numpy as np

from .checkpoint import Checkpoint
from .families import family_for
from .families.base import DecoderFamily
from .plan import Plan
from .writer import expert_layout


def storage_dtype(shape: tuple[int, ...], keep_f32: bool, dtype: str) -> str:
    """Matrices are stored in the requested dtype; norms, biases, routers and gates stay f32 (routing
    decisions are sensitive, and those tensors are small)."""
    return dtype if len(shape) == 2 and not keep_f32 else "f32"


def package_tensors(family: DecoderFamily, ckpt: Checkpoint | None, dtype: str) -> dict[str, tuple[tuple, str]]:
    """Every dense package tensor: name -> (shape, storage dtype), as convert writes them."""
    keep_f32 = family.f32_tensors(ckpt)
    out = {}
    for name, shape in family.dense_tensors(ckpt).items():
        placeholder = np.broadcast_to(np.float32(0), shape)       # shapes only: no memory for the data
        for out_name, array in family.transform_dense(name, placeholder).items():
            out[out_name] = (tuple(array.shape), storage_dtype(array.shape, out_name in keep_f32 or name in keep_f32,
                                                               dtype))
    for name, array in family.generated_tensors().items():
        out[name] = (tuple(array.shape), "f32")
    return out


def build_plan(family: DecoderFamily, ckpt: Checkpoint | None, tensors: dict[str, tuple[tuple, str]], dtype: str,
               geometry: dict | None = None) -> dict:
    """The plan's JSON (see plan.py) over the package tensors `package_tensors` gives; ckpt=None names
    tensors by their first alias."""
    layout = expert_layout(family.expert_shapes(), dtype)
    plan = Plan(tensors, geometry)
    family.build_plan(plan, ckpt, layout, dtype)
    return plan.to_json(layout, len(family.moe.moe_layers) * family.moe.num_experts)


def plan_from_config(config: dict, dtype: str = "f16") -> dict:
    family = family_for(config)
    return build_plan(family, None, package_tensors(family, None, dtype), dtype)
