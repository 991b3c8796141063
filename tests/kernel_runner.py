"""Runs one kernel through the real plan executor on numpy inputs, for the kernel tests."""
from __future__ import annotations

import numpy as np
import wgpu

from webmoe.engine.executor import STORAGE, Executor, Readback


def to_words(a: np.ndarray, dtype: str) -> np.ndarray:
    """numpy array -> the 32-bit words the kernels read (f16 packed two per word, padded)."""
    if dtype == "f16":
        h = np.ascontiguousarray(a, dtype=np.float16).reshape(-1)
        if h.size % 2:
            h = np.concatenate([h, np.zeros(1, np.float16)])
        return h.view(np.uint32)
    if dtype == "u32":
        return np.ascontiguousarray(a, dtype=np.uint32).reshape(-1)
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1)


def run_kernel(gpu, kernel: str, inputs: dict, outputs: dict, params: dict, dispatch, defines=(),
               env=None, dtypes=None) -> dict[str, np.ndarray]:
    """inputs: name -> array (bound as given); outputs: name -> (initial array, dtype). Returns outputs."""
    dtypes = dtypes or {}
    device = gpu.device
    buffers = {}
    for name, arr in {**inputs, **{k: v[0] for k, v in outputs.items()}}.items():
        dt = dtypes.get(name) or (outputs[name][1] if name in outputs else "f32")
        words = to_words(arr, dt)
        buf = device.create_buffer(size=max(words.nbytes, 4), usage=STORAGE)
        device.queue.write_buffer(buf, 0, words)
        buffers[name] = buf
    plan = {"buffers": {}, "steps": [{"kernel": kernel, "defines": list(defines), "bind": {n: n for n in buffers},
                                      "params": params, "dispatch": dispatch}]}
    ex = Executor(gpu, plan, buffers, {}, {})
    encoder = device.create_command_encoder()
    ex.encode(encoder, env or {})
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
