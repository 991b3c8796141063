"""Runs kernels as the plan builder (converter/plan.py) states them: the test names its inputs and
outputs, calls one Plan method, and the real executor runs the resulting steps with the plan's own
geometry and dispatch, so the kernel tests exercise exactly what packages run."""
from __future__ import annotations

import numpy as np
import wgpu

from webmoe.converter.plan import DEFAULT_MAX_BINDING, Plan, row_parts
from webmoe.converter.quant import decode, encode
from webmoe.engine.executor import STORAGE, Executor, Readback, padded


def to_words(a: np.ndarray, dtype: str) -> np.ndarray:
    """numpy array -> the 32-bit words the kernels read: u32, or a weight format of format/weight_formats.py (encoded by converter/quant.py)."""
    if dtype == "u32":
        return np.ascontiguousarray(a, dtype=np.uint32).reshape(-1)
    return np.frombuffer(encode(a, dtype), np.uint32)


def as_stored(w: np.ndarray, dtype: str, max_binding: int = DEFAULT_MAX_BINDING) -> np.ndarray:
    """The values the kernels read for weight w stored in dtype (numpy's decoding of the encoded bytes),
    cut into row parts as run_plan cuts it: each part is encoded on its own."""
    if w.ndim != 2:
        return decode(encode(w, dtype), dtype, w.size).reshape(w.shape)
    parts = [w[p["row0"]:p["row0"] + p["rows"]] for p in row_parts("w", w.shape, dtype, max_binding)]
    return np.concatenate([decode(encode(p, dtype), dtype, p.size).reshape(p.shape) for p in parts])


def run_plan(gpu, build, inputs: dict, outputs: dict, env=None, dtypes=None, geometry=None,
             max_binding: int = DEFAULT_MAX_BINDING, split=("w",)) -> dict[str, np.ndarray]:
    """inputs: name -> array; outputs: name -> (initial array, dtype); dtypes: storage dtype of an input
    ("f32" default, "u32", or a weight format: f16, q8, q4, mxfp4). build(plan) calls Plan methods on
    those names (the runtime's
    "experts", "expert_bank" and "expert_slots" are ordinary inputs here). env: the plan variables (T,
    pos, ...). max_binding: the inputs named in `split` (weights) larger than this are cut into row parts,
    as a package's are.
    Runs the steps built, then the sampler's if it was built; returns the outputs."""
    dtypes = dtypes or {}
    arrays = {**inputs, **{k: v[0] for k, v in outputs.items()}}
    kinds = {n: dtypes.get(n) or (outputs[n][1] if n in outputs else "f32") for n in arrays}
    plan = Plan({n: (np.shape(a), kinds[n]) for n, a in arrays.items() if n in split}, geometry, max_binding)
    plan.tensors.update({n: (np.shape(a), kinds[n]) for n, a in arrays.items() if n not in split})
    build(plan)
    steps = plan.steps + plan.sampler_steps
    device = gpu.device
    buffers = {}
    pieces = {n: [(p["tensor"], np.asarray(arrays[n])[p["row0"]:p["row0"] + p["rows"]]) for p in parts]
              for n, parts in plan.splits.items()}
    for name, arr in arrays.items():
        for part, data in pieces.get(name, [(name, arr)]):
            words = to_words(data, kinds[name])
            buf = device.create_buffer(size=padded(words.nbytes), usage=STORAGE | wgpu.BufferUsage.UNIFORM)
            device.queue.write_buffer(buf, 0, words)
            buffers[part] = buf
    scratch = {n: spec for n, spec in plan.buffers.items() if n not in buffers}   # plan buffers no test fills
    env = env or {}
    ex = Executor(gpu, {"buffers": scratch, "steps": steps}, buffers, {}, {"T": env.get("T", 1), "S": env.get("S", 1)})
    encoder = device.create_command_encoder()
    ex.encode(encoder, env)
    device.queue.submit([encoder.finish()])
    result = {}
    for name, (init, dt) in outputs.items():
        rb = Readback(device, buffers[name].size)
        enc = device.create_command_encoder()
        enc.copy_buffer_to_buffer(buffers[name], 0, rb.buffer, 0, buffers[name].size)
        device.queue.submit([enc.finish()])
        raw = np.frombuffer(rb.read(buffers[name].size), dtype=np.uint32 if dt == "u32" else np.float32)
        result[name] = raw[: np.asarray(init).size].reshape(np.asarray(init).shape)
    return result
