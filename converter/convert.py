"""HF checkpoint directory -> RDRR package directory."""
from __future__ import annotations

import math
from pathlib import Path

from tqdm import tqdm

from .checkpoint import Checkpoint
from .errors import ConversionError
from .families import family_for
from .model_plan import build_plan, package_tensors
from .tokenizer_info import tokenizer_files, tokenizer_info
from .writer import PackageWriter, expert_layout

DTYPES = ("f32", "f16")


def convert(src: Path, out: Path, dtype: str = "f16", force: bool = False, progress: bool | None = None) -> Path:
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype must be one of {', '.join(DTYPES)}")
    ckpt = Checkpoint(src)
    family = family_for(ckpt.config)
    d, moe = family.dims, family.moe
    dense = family.dense_tensors(ckpt)
    for name, shape in dense.items():           # headers only: fail before writing anything
        if tuple(ckpt.shape(name)) != tuple(shape):
            raise ConversionError(f"tensor {name} has shape {list(ckpt.shape(name))}, expected {list(shape)} "
                                  "from config.json")
    for l in moe.moe_layers:
        family.check_experts(ckpt, l)
    tok_info = tokenizer_info(ckpt, d.vocab_size)
    layout = expert_layout(family.expert_shapes(), dtype)
    tensors = package_tensors(family, ckpt, dtype)      # name -> (shape, storage dtype): what is written
    try:
        plan = build_plan(family, ckpt, tensors, dtype)
    except ValueError as e:                     # a dimension the kernels do not support
        raise ConversionError(str(e)) from None

    n_expert_params = sum(math.prod(s) for s in family.expert_shapes().values())
    total = sum(math.prod(s) for s in dense.values()) + len(moe.moe_layers) * moe.num_experts * n_expert_params

    writer = PackageWriter(out, force)
    try:
        with tqdm(total=total, unit="param", unit_scale=True, desc=f"convert {family.name}",
                  disable=(not progress) if progress is not None else None) as bar:
            for name, shape in dense.items():
                for out_name, array in family.transform_dense(name, ckpt.read(name, shape)).items():
                    writer.add_dense(out_name, array, tensors[out_name][1])
                bar.update(math.prod(shape))
            for name, array in family.generated_tensors().items():
                writer.add_dense(name, array, tensors[name][1])
            for l in moe.moe_layers:
                for e in range(moe.num_experts):
                    writer.add_expert(l, e, family.expert_weights(ckpt, l, e), layout)
                    bar.update(n_expert_params)
        for f in tokenizer_files(ckpt):
            writer.copy_file(f, f.name)
        moe_info = {**family.describe()["moe"], "expert_layout": layout, "router": f"{moe.scoring}_topk"}
        manifest = {
            "family": family.name,
            "architecture": (ckpt.config.get("architectures") or [None])[0],
            "dtype": dtype,
            "config": family.describe()["dims"],
            "moe": moe_info,
            "hf_config": ckpt.config,
            "generation_config": ckpt.generation_config,
            "tokenizer": tok_info,
            "plan": plan,
        }
        return writer.finish(manifest)
    except BaseException:
        writer.abort()
        raise
