"""The plan interpreter: allocates the plan's buffers, compiles each step's kernel once, and runs the
steps for given runtime variables (the plan's `variables`: T, logit_row0, n_logits, the sampler's,
bank_experts). Knows no model family; see converter/plan.py.

A runtime buffer may be a list of banks (the expert slab and its bank ranges): a step that binds one gets
a bind group per bank and is dispatched once per bank asked for."""
from __future__ import annotations

import math

import numpy as np
import wgpu

from webmoe.format.expr import evaluate, variables

from .device import Gpu
from .shaders import load_kernel
from .errors import PlanError

STORAGE = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC
_U32 = {"u32": np.uint32, "i32": np.int32, "f32": np.float32}


class Readback:
    """A reused MAP_READ staging buffer for copying results to the host."""

    def __init__(self, device, size: int):
        self.device = device
        self.buffer = device.create_buffer(size=max(size, 16),
                                           usage=wgpu.BufferUsage.MAP_READ | wgpu.BufferUsage.COPY_DST)

    def read(self, size: int) -> memoryview:
        self.buffer.map_sync(wgpu.MapMode.READ, 0, size)
        try:
            return self.buffer.read_mapped(0, size, copy=True)
        finally:
            self.buffer.unmap()


class Executor:
    def __init__(self, gpu: Gpu, plan: dict, tensors: dict, runtime_buffers: dict, dims: dict[str, int]):
        """tensors: name -> GPUBuffer; runtime_buffers: name -> GPUBuffer or a list of them (banks, all
        lists of the same length). dims: sizes for "T" and "S" in buffer shapes."""
        self.gpu, self.device = gpu, gpu.device
        self.buffers = dict(tensors)
        self.buffers.update(runtime_buffers)
        for name, spec in plan["buffers"].items():
            shape = [dims[d] if isinstance(d, str) else d for d in spec["shape"]]
            size = max(4 * math.prod(shape), 4)
            self.buffers[name] = self.device.create_buffer(size=padded(size), usage=STORAGE, label=name)
        self.steps = [self._compile(i, s) for i, s in enumerate(plan["steps"])]
        # each step's Params block sits at its own aligned offset of one uniform buffer
        align = gpu.limits.get("min-uniform-buffer-offset-alignment", 256)
        block = max([_block_size(st["kernel"]) for st in self.steps] + [16])
        self.align = -(-block // align) * align
        self.params = self.device.create_buffer(size=max(len(self.steps), 1) * self.align,
                                                usage=wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST)
        for st in self.steps:
            st["bind_groups"] = self._bind_groups(st)
        self._template = np.zeros(len(self.steps) * self.align // 4, np.uint32)
        self._dynamic: list[tuple[int, object, type]] = []
        for st in self.steps:
            for j, (field, wtype) in enumerate(st["kernel"].params):
                word = st["index"] * self.align // 4 + j
                value = st["params"][field]
                if variables(value):
                    self._dynamic.append((word, value, _U32[wtype]))
                else:
                    self._template[word] = np.array(value, dtype=_U32[wtype]).view(np.uint32)
        self._last_params = None

    def _compile(self, index: int, step: dict) -> dict:
        label = step.get("label") or step["kernel"]
        consts = step.get("consts") or {}
        kernel = load_kernel(step["kernel"], [*step.get("defines", ()), *runtime_defines(self.gpu, consts)], consts)
        missing = [f for f, _ in kernel.params if f not in step["params"]]
        unbound = [b for b in kernel.bindings if b != "p" and b not in step["bind"]]
        unknown = [b for b, t in step["bind"].items() if b not in kernel.bindings or t not in self.buffers]
        if missing or unbound or unknown:
            raise PlanError(f"plan step {label}: params missing {missing}, bindings missing {unbound}, "
                            f"unknown bindings {unknown}")
        return {"index": index, "label": label, "kernel": kernel, "pipeline": self._pipeline(kernel),
                "params": step["params"], "bind": step["bind"], "dispatch": step["dispatch"],
                "repeat": step.get("repeat", 1)}

    def _pipeline(self, kernel):
        """The device's pipeline for this kernel variant, compiled the first time a step asks for it. Bind
        groups are made from its own ("auto") layout, so steps sharing it need nothing else in common."""
        key = (kernel.name, kernel.defines, kernel.consts)
        if key not in self.gpu.pipelines:
            module = self.device.create_shader_module(code=kernel.source, label=kernel.name)
            self.gpu.pipelines[key] = self.device.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": "main"}, label=kernel.name)
        return self.gpu.pipelines[key]

    def _bind_groups(self, st: dict) -> list:
        """One bind group, or one per bank when the step binds a banked runtime buffer."""
        kernel = st["kernel"]
        n_banks = max([len(self.buffers[t]) for t in st["bind"].values() if isinstance(self.buffers[t], list)],
                      default=0)
        groups = []
        for bank in range(max(n_banks, 1)):
            entries = []
            if "p" in kernel.bindings:
                entries.append({"binding": kernel.bindings["p"].index,
                                "resource": {"buffer": self.params, "offset": st["index"] * self.align,
                                             "size": _block_size(kernel)}})
            for var, target in st["bind"].items():
                buf = self.buffers[target]
                buf = buf[bank] if isinstance(buf, list) else buf
                entries.append({"binding": kernel.bindings[var].index,
                                "resource": {"buffer": buf, "offset": 0, "size": buf.size}})
            groups.append(self.device.create_bind_group(layout=st["pipeline"].get_bind_group_layout(0),
                                                        entries=entries))
        st["banked"] = n_banks > 0
        return groups

    def write_params(self, env: dict[str, int]) -> None:
        if not self.steps:
            return
        words = self._template.copy()
        for word, expr, wtype in self._dynamic:
            words[word] = np.array(evaluate(expr, env), dtype=wtype).view(np.uint32)
        if self._last_params is None or not np.array_equal(words, self._last_params):
            self.device.queue.write_buffer(self.params, 0, words)
            self._last_params = words

    def encode(self, encoder, env: dict[str, int], profiler=None) -> None:
        """Records every step into one compute pass (WebGPU orders the dispatches' memory accesses)."""
        self.write_params(env)
        self.encode_range(encoder, env, 0, len(self.steps), profiler=profiler)

    def encode_range(self, encoder, env: dict[str, int], start: int, stop: int, banks=None,
                     bank_env: list[dict] | None = None, profiler=None) -> None:
        """Records steps start .. stop; the caller wrote the params for env and submits before they change.
        Banked steps are dispatched for each bank in `banks` (default: every bank), their dispatch
        evaluated with that bank's variables bank_env[bank] (such as bank_experts). With a profiler
        (engine/profiler.py) every dispatch gets a timed pass of its own."""
        if start >= stop:
            return
        cpass = None if profiler else encoder.begin_compute_pass()
        for st in self.steps[start:stop]:
            for bank in ([0] if not st["banked"] else range(len(st["bind_groups"])) if banks is None else banks):
                bank_vars = bank_env[bank] if st["banked"] and bank_env else {}
                counts = [evaluate(d, {**env, **bank_vars}) for d in st["dispatch"]]
                if min(counts) <= 0:
                    continue
                p = profiler.begin(encoder, st["label"]) if profiler else cpass
                p.set_pipeline(st["pipeline"])
                p.set_bind_group(0, st["bind_groups"][bank])
                for _ in range(st["repeat"]):
                    p.dispatch_workgroups(*counts)
                if profiler:
                    p.end()
        if cpass:
            cpass.end()


def padded(size: int) -> int:
    """Buffer bytes for `size`: whole 16-byte words, since kernels read activations and weights as vec4."""
    return max(16, -(-size // 16) * 16)


def runtime_defines(gpu: Gpu, consts: dict) -> list[str]:
    """Defines the runtime adds to a plan step's, from what the adapter offers. They choose how a kernel
    runs, never what it computes: SUBGROUPS when the row groups of a matrix kernel (LANES / ROWS lanes,
    shaders/row_group.wgsl) fit in one subgroup."""
    if "ROWS" in consts and "LANES" in consts and 0 < consts["LANES"] // consts["ROWS"] <= gpu.subgroup_size:
        return ["SUBGROUPS"]
    return []


def _block_size(kernel) -> int:
    """Bytes of a kernel's Params uniform: 4-byte fields, padded to 16 as WGSL requires."""
    return max(16, -(-len(kernel.params) * 4 // 16) * 16)
