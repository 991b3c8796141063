"""The execution plan: named buffers, an ordered list of kernel steps and the records that state the
model's structure, written into the package. The runtimes interpret it and discover nothing by name.

A step names a kernel in shaders/, its preprocessor defines, its geometry constants (`consts`, injected
into the kernel by the preprocessor's //!const directive), what each of the kernel's bindings is bound to
(a plan buffer, a package tensor, or a runtime buffer such as the expert slab), the fields of its
`Params` uniform and its workgroup counts (and `repeat`, when it is dispatched several times in a row).
Sizes that depend on the call are plan expressions (format/expr.py): an int, a variable, or
[var, mul, div] = ceil(var * mul / div). Runtime variables:
    T           tokens in this forward call (<= the runtime's chunk size)
    (positions and cache_rows: plan buffers the runtime writes, a value per token)
    logit_row0  first row of the final hidden state that gets logits
    n_logits    how many rows get logits (1 while generating, T for Engine.logits)
    temperature, top_p, u   the sampler's inputs
    masked      1 when the sampled row has a token mask (constrained decoding; the runtime writes the row of
                `token_mask`), else 0: sample_mask's workgroups, so an unconstrained row dispatches nothing
    bank_experts  per bank of the expert slab: how many experts its window covers (the grouped expert
                steps' workgroups along y; the bank's uniform says which)
Buffer shapes may use "T" (the chunk size) and "S" (the runtime's maximum sequence length).

Tensors larger than `max_binding` (the storage binding every WebGPU adapter grants: 128 MiB unless the
converter is told otherwise) are split by rows into package tensors `NAME.partI`; `splits` states the
parts and each step that reads such a tensor becomes one step per part, so no binding exceeds the limit.
Routed experts whose slot would exceed it are cut along their intermediate dimension into `pieces` (see
format/expert_layout.py): the expert FFN is the sum of its pieces' FFNs.

Besides `buffers` and `steps` the plan holds:
    moe_layers  per MoE layer: the router-logits and router steps, the buffer of the chosen expert ids,
                the router's input, and the range of steps that read the expert slab
    sampler     the steps that pick the next token from the logits
    io          the buffers a runtime writes (token ids) and reads back (logits, sampled token)
    splits      tensor -> its row parts [{tensor, row0, rows}]
    resources   bytes of every buffer as a function of T and S, the largest tensor, the expert slots
    variants    per class of adapter, the steps whose constants and dispatch differ (format/plan_variants.py)

GEOMETRY is the one statement of each kernel's workgroup shape on a GPU, CPU_GEOMETRY what processors run
instead: the kernels read it as constants and the dispatches below are computed from the same numbers, so
they cannot disagree.
"""
from __future__ import annotations

import math

from webmoe.format.weight_formats import encoded_size, fmt

# provided by the runtime's expert cache: the slab (one of its banks per dispatch), the bank's slot range
# (a uniform vec4<u32>: first slot, slot count, first expert, experts) and the slot table [layers, E, pieces]
RUNTIME_BUFFERS = ("experts", "expert_bank", "expert_slots")
VARIABLES = ("T", "logit_row0", "n_logits", "temperature", "top_p", "u", "masked", "sampling", "bank_experts")
DEFAULT_MAX_BINDING = 128 << 20     # WebGPU's default maxStorageBufferBindingSize: every adapter grants it

GEOMETRY: dict[str, dict[str, int]] = {
    "embed": {"WG": 64},
    "rmsnorm": {"LANES": 64},
    "silu_mul": {"WG": 256},
    "gated_add": {"WG": 64},
    # matrix kernels: ROWS output rows of up to TOKENS tokens (TILE pairs) per workgroup of LANES lanes:
    # LANES / ROWS lanes per row, or ROWS / LANES rows per lane (shaders/row_group.wgsl). On a GPU (an
    # H200 through Vulkan, docs/benchmarks.md "Real GPU") 8 lanes per row ran the bench model 1.3x faster
    # in prefill and 1.3-1.5x in decode than one row per lane, and 5-7x faster than 16 rows per lane;
    # processors take lane rows (CPU_GEOMETRY, a plan variant).
    "matmul": {"LANES": 256, "ROWS": 32, "TOKENS": 8},
    "rope": {"WG": 32},
    "kv_write": {"WG": 64},
    "kv_store": {"WG": 64},
    "attention": {"LANES": 16},              # each lane owns ceil(max(D, Dv) / LANES) dims (DIMS_PER_LANE);
                                             # 16 lanes: 2.6x faster decode attention than 64 on lavapipe
    "router": {"WG": 64, "MAX_K": 32, "MAX_E": 1024},
    "moe_gather": {"WG": 256, "MAX_E": 1024},
    "moe_gate_up": {"LANES": 256, "ROWS": 32, "TILE": 8},    # ROWS rows x TILE pairs of one expert
    "moe_down": {"LANES": 256, "ROWS": 32, "TILE": 8},
    "scatter_add": {"WG": 64},
    "sample_mask": {"WG": 256},
    "sample_max": {"LANES": 256},
    "sample_mass": {"LANES": 256},
    "sample_chunks": {"CHUNKS": 256},      # sample_pick walks the same chunks
}

# The matrix kernels on adapters that run WebGPU on the processor (the plan's "cpu" variant, format/plan_variants.py):
# 16 rows per lane, so every x value a lane loads serves 16 rows; against one row per lane the bench model's
# q/k/v matmul ran 2-3x faster on lavapipe and 3-8x in Chromium's SwiftShader (docs/benchmarks.md, "Rows per
# lane"), and 5-7x slower on an H200.
CPU_GEOMETRY: dict[str, dict[str, int]] = {kernel: {"LANES": 16, "ROWS": 256}
                                           for kernel in ("matmul", "moe_gate_up", "moe_down")}


def rope_args(inv_freq: str, rot: int, attn_factor: float, rot_off: int = 0, interleaved: bool = False) -> dict:
    """Rotary embedding for the kernels that rotate on the way (kv_store's keys, attention's queries): dims
    rot_off .. rot_off + rot of each head rotate by inv_freq [rot / 2], scaled by attn_factor; rotate_half
    pairs, or interleaved pairs (2i, 2i + 1). Plan.rope states the same for a step that rotates in place."""
    return {"inv_freq": inv_freq, "rot": rot, "rot_off": rot_off, "attn_factor": attn_factor,
            "interleaved": interleaved}


SAMPLE_BISECTION_STEPS = 30   # halvings of the nucleus threshold's interval: 2^-30 of the max token's q
# values each lane hands to reduce.wgsl at once: the matrix kernels' row groups sum four tokens (pairs) at a time
_RED_VALUES = {"rmsnorm": lambda g: 1, "sample_mass": lambda g: 1, "matmul": lambda g: 4,
               "moe_gate_up": lambda g: 4, "moe_down": lambda g: 4}


W_STEP = 8      # weights shaders/weights.wgsl's w_step decodes at once, in every format


def aligned(K: int, *x_offsets: int) -> bool:
    """Whether a matrix kernel may read its rows W_STEP weights at a time (weights.wgsl's w_step) and x as
    vec4 (W_ALIGNED): rows of K weights start on multiples of W_STEP and x's strides and offsets are
    multiples of 4 values. Real models always are; odd test sizes take the scalar path."""
    return K % W_STEP == 0 and all(o % 4 == 0 for o in x_offsets)


def ceil_div(var, mul: int, div: int):
    return [var, mul, div]


MAX_ELEMENTS = 2**32 - 1       # kernels index a binding's elements with u32


def row_parts(name: str, shape: tuple[int, ...], dtype: str, max_binding: int) -> list[dict]:
    """A matrix [rows, cols] cut by rows into parts of at most max_binding bytes and MAX_ELEMENTS elements
    (one part if it fits). Each part is encoded on its own, its blocks starting at its first element."""
    if len(shape) != 2 or (encoded_size(shape, dtype) <= max_binding and math.prod(shape) <= MAX_ELEMENTS):
        return [{"tensor": name, "row0": 0, "rows": shape[0]}]
    f = fmt(dtype)
    per_part = min(max_binding // (4 * f.words) * f.block, MAX_ELEMENTS) // shape[1]
    if per_part < 1:
        raise ValueError(f"tensor {name}: one row of {shape[1]} values exceeds a {max_binding}-byte binding")
    return [{"tensor": f"{name}.part{i}", "row0": r0, "rows": min(per_part, shape[0] - r0)}
            for i, r0 in enumerate(range(0, shape[0], per_part))]


def parts_of(splits: dict, name: str, shape) -> list[dict]:
    """The row parts a tensor is read through: plan["splits"][name], or the whole tensor."""
    return splits.get(name) or [{"tensor": name, "row0": 0, "rows": shape[0] if shape else 0}]


class Plan:
    def __init__(self, tensors: dict[str, tuple[tuple[int, ...], str]], geometry: dict | None = None,
                 max_binding: int = DEFAULT_MAX_BINDING):
        """tensors: tensor name -> (shape, format of format/weight_formats.py), before splitting. geometry: per-kernel
        overrides of GEOMETRY (tests use it to show that kernels and dispatches follow one source).
        max_binding: the largest tensor part or expert slot the plan lets a step bind."""
        self.max_binding = max_binding
        self.splits = {n: row_parts(n, shape, dt, max_binding) for n, (shape, dt) in tensors.items()}
        self.splits = {n: parts for n, parts in self.splits.items() if len(parts) > 1}
        self.tensors = {}                     # package tensors: the parts of split ones
        for n, (shape, dt) in tensors.items():
            for part in self.splits.get(n, [{"tensor": n, "rows": shape[0] if shape else 0}]):
                self.tensors[part["tensor"]] = ((part["rows"], *shape[1:]) if n in self.splits else shape, dt)
        self.geometry = {k: {**v, **(geometry or {}).get(k, {})} for k, v in GEOMETRY.items()}
        for kernel in ("matmul", "moe_gate_up", "moe_down"):      # row groups or lane rows
            g = self.geometry[kernel]
            ratio = max(g["LANES"], g["ROWS"]) // min(g["LANES"], g["ROWS"])
            if max(g["LANES"], g["ROWS"]) % min(g["LANES"], g["ROWS"]) or ratio & (ratio - 1):
                raise ValueError(f"{kernel}: LANES {g['LANES']} and ROWS {g['ROWS']} must differ by a power of two")
        self.buffers: dict[str, dict] = {}
        self.steps: list[dict] = []
        self.moe_layers: list[dict] = []
        self.sampler_steps: list[dict] = []
        # the runtime writes ids, positions and cache_rows before each forward pass (and token_mask rows
        # before sampling constrained rows) and reads logits/token
        self.io = {"ids": None, "positions": None, "cache_rows": None, "logits": None, "token": None,
                   "token_mask": None}

    def buffer(self, name: str, shape: list, dtype: str = "f32") -> str:
        if name in self.buffers and self.buffers[name] != {"shape": shape, "dtype": dtype}:
            raise ValueError(f"plan buffer {name} declared twice with different shapes")
        if sum(isinstance(d, str) for d in shape) > 1 or not all(d in ("T", "S") or isinstance(d, int) for d in shape):
            raise ValueError(f"plan buffer {name}: a shape has integers and at most one of T, S")
        self.buffers[name] = {"shape": shape, "dtype": dtype}
        return name

    def consts(self, kernel: str, extra: dict | None = None) -> dict[str, int]:
        g = {**self.geometry.get(kernel, {}), **(extra or {})}
        if kernel in _RED_VALUES:
            g["RED_VALUES"] = _RED_VALUES[kernel](g)
        return g

    def _make_step(self, kernel: str, bind: dict, params: dict, dispatch: list, defines=(), label: str = "",
                   consts: dict | None = None, repeat: int = 1) -> dict:
        for target in bind.values():
            if target in self.splits:
                raise ValueError(f"step {label or kernel} binds {target!r} whole; it is split into parts")
            if target not in self.buffers and target not in self.tensors and target not in RUNTIME_BUFFERS:
                raise ValueError(f"step {label or kernel} binds unknown buffer {target!r}")
        step = {"kernel": kernel, "defines": sorted(defines), "consts": self.consts(kernel, consts), "bind": bind,
                "params": params, "dispatch": dispatch, "label": label}
        if repeat != 1:
            step["repeat"] = repeat       # dispatched that many times in a row
        return step

    def step(self, kernel: str, bind: dict, params: dict, dispatch: list, defines=(), label: str = "",
             consts: dict | None = None) -> int:
        """Appends a step; returns its index."""
        self.steps.append(self._make_step(kernel, bind, params, dispatch, defines, label, consts))
        return len(self.steps) - 1

    def parts(self, tensor: str) -> list[dict]:
        """The row parts a step reads `tensor` through: [{tensor, row0, rows}] (one entry if not split)."""
        return parts_of(self.splits, tensor, None if tensor in self.splits else self.tensors[tensor][0])

    def rows(self, kernel: str, n: int) -> int:
        """ROWS of a matrix kernel's step over n output rows: the geometry's, or for a smaller matrix the power of
        two that holds its rows (a router's 8 rows: 2 lanes per row, not 16 lanes of 16 rows that repeat the
        last one)."""
        return min(self.geometry[kernel]["ROWS"], 1 << max(n - 1, 0).bit_length())

    def weight_dtype(self, tensor: str) -> str:
        """The storage format of a (possibly split) tensor."""
        return self.tensors[self.parts(tensor)[0]["tensor"]][1]

    def weight_defines(self, tensor: str) -> list[str]:
        """The define that selects the tensor's format in shaders/weights.wgsl (none for f32)."""
        define = fmt(self.weight_dtype(tensor)).define
        return [define] if define else []

    # --- structure records ------------------------------------------------------------------------

    def inputs_outputs(self, ids: str, positions: str, cache_rows: str, logits: str) -> None:
        """ids, positions, cache_rows: [T] u32 per token of a forward pass: its token id, its absolute
        position in its sequence, and the KV cache row its keys and values go to (its sequence's first row
        plus its position); tokens of one pass may belong to different sequences."""
        self.io.update(ids=ids, positions=positions, cache_rows=cache_rows, logits=logits)

    def moe_layer(self, layer: int, router_input: str, router_logits_step: int, router_step: int,
                  experts: tuple[int, int]) -> None:
        """Records one MoE layer: the runtime reads back `topk_ids` after router_step when it pages experts,
        and re-runs steps experts[0] .. experts[1] (the only ones reading the slab) per batch of experts."""
        logits_step, router = self.steps[router_logits_step], self.steps[router_step]
        if logits_step["bind"]["x"] != router_input or router["bind"]["logits"] != logits_step["bind"]["y"]:
            raise ValueError(f"MoE layer {layer}: router steps do not connect")
        start, stop = experts
        if any("experts" not in s["bind"].values() for s in self.steps[start:stop]):
            raise ValueError(f"MoE layer {layer}: steps {start}..{stop} do not all read the expert slab")
        self.moe_layers.append({"layer": layer, "router_input": router_input, "router_logits_step": router_logits_step,
                                "router_step": router_step, "topk_ids": router["bind"]["topk_ids"],
                                "experts": [start, stop]})

    def sampler(self, logits: str, token: str, V: int) -> None:
        """The next token from row 0 of `logits`: the grammar's forbidden tokens removed when the row has a
        mask (shaders/sample_mask.wgsl), then argmax at temperature 0, else nucleus sampling, in passes of
        one workgroup each (shaders/sample_state.wgsl). The runtime sets `row` per batch row, and the
        variable `sampling` to 1 when the temperature is above 0: the nucleus steps (33 dispatches) are
        dispatched only then, so a greedy token's sampler is one dispatch (its kernels also do nothing at
        temperature 0, so a runtime that dispatches them anyway gets the same token)."""
        mask = self.buffer("token_mask", ["T", -(-V // 32)], "u32")
        state = self.buffer("sample_state", [8])
        chunks = self.geometry["sample_chunks"]["CHUNKS"]
        chunk_mass = self.buffer("sample_chunk_mass", [chunks])
        params = {"V": V, "row": 0, "temperature": "temperature", "top_p": "top_p", "u": "u"}
        wg = self.geometry["sample_mask"]["WG"]
        self.sampler_steps = [
            self._make_step("sample_mask", {"logits": logits, "token_mask": mask}, {"V": V, "row": 0},
                            [ceil_div("masked", -(-V // wg), 1), 1, 1]),
            self._make_step("sample_max", {"logits": logits, "token": token, "state": state}, params, [1, 1, 1]),
            self._make_step("sample_mass", {"logits": logits, "state": state}, params, ["sampling", 1, 1], ["TOTAL"]),
            self._make_step("sample_mass", {"logits": logits, "state": state}, params, ["sampling", 1, 1],
                            repeat=SAMPLE_BISECTION_STEPS),
            self._make_step("sample_chunks", {"logits": logits, "state": state, "chunk_mass": chunk_mass}, params,
                            ["sampling", 1, 1]),
            self._make_step("sample_pick", {"logits": logits, "state": state, "chunk_mass": chunk_mass,
                                            "token": token}, params, ["sampling", 1, 1], consts={"CHUNKS": chunks})]
        self.io.update(token=token, token_mask=mask)

    def resources(self, expert_layout: dict | None, n_experts: int) -> dict:
        """What the model needs of an adapter: bytes of every plan buffer per chunk token (T), per
        position (S) or fixed; the largest tensor (one storage binding each); the expert slots."""
        buffers = {}
        for name, spec in self.buffers.items():
            words = math.prod(d for d in spec["shape"] if isinstance(d, int))
            var = next((d for d in spec["shape"] if isinstance(d, str)), "fixed")
            buffers[name] = {var: 4 * words}
        sizes = {n: encoded_size(shape, dt) for n, (shape, dt) in self.tensors.items()}
        largest = max(sizes, key=sizes.get) if sizes else None
        layout = expert_layout or {}
        return {"buffers": buffers, "dense_bytes": sum(sizes.values()), "max_binding": self.max_binding,
                "largest_tensor": {"name": largest, "bytes": sizes.get(largest, 0)},
                "experts": {"count": n_experts, "slot_bytes": layout.get("slot_bytes", 0),
                            "pieces": layout.get("pieces", 1), "expert_bytes": layout.get("expert_bytes", 0)}}

    def to_json(self, expert_layout: dict | None = None, n_experts: int = 0) -> dict:
        if None in self.io.values() or not self.sampler_steps:
            raise ValueError("a plan needs its inputs, outputs and sampler")
        return {"buffers": self.buffers, "steps": self.steps, "moe_layers": self.moe_layers,
                "sampler": self.sampler_steps, "io": self.io, "variables": list(VARIABLES), "splits": self.splits,
                "resources": self.resources(expert_layout, n_experts)}

    # --- one method per kernel; each returns the index of its (first) step ------------------------

    def embed(self, ids: str, w: str, y: str, H: int, label="embed") -> int:
        """y[t] = w[ids[t]]; one step per row part of w, each writing the tokens whose ids it holds."""
        g = self.geometry["embed"]
        first = len(self.steps)
        for part in self.parts(w):
            self.step("embed", {"ids": ids, "w": part["tensor"], "y": y},
                      {"T": "T", "H": H, "row0": part["row0"], "rows": part["rows"]},
                      [-(-H // g["WG"]), "T", 1], self.weight_defines(w), label)
        return first

    def rmsnorm(self, x: str | None, weight: str, y: str, rows, H: int, eps: float, row0=0, bias: str | None = None,
                stride: int | None = None, label="") -> int:
        """Rows row0 .. row0 + rows (exprs) of length H, `stride` values apart (default H), one workgroup
        each. x=None normalises y in place. A bias makes it LayerNorm (mean subtracted, bias added)."""
        bind = {"weight": weight, "y": y}
        defines = [] if x is not None else ["IN_PLACE"]
        if x is not None:
            bind["x"] = x
        if bias is not None:
            bind["bias"] = bias
            defines.append("LAYERNORM")
        return self.step("rmsnorm", bind, {"rows": rows, "row0": row0, "H": H, "stride": stride or H, "eps": eps},
                         [rows, 1, 1], defines, label)

    def silu_mul(self, gate: str, up: str, y: str, I: int, label="") -> int:
        """y = silu(gate) * up elementwise over [T, I]: the SwiGLU of a dense FFN."""
        return self.step("silu_mul", {"gate": gate, "up": up, "y": y}, {"n": ceil_div("T", I, 1)},
                         [ceil_div("T", I, self.geometry["silu_mul"]["WG"]), 1, 1], [], label)

    def gated_add(self, gate_logit: str, x: str, y: str, H: int, label="") -> int:
        """y[t] += sigmoid(gate_logit[t]) * x[t]: a gated shared expert (Qwen2-MoE)."""
        return self.step("gated_add", {"gate_logit": gate_logit, "x": x, "y": y}, {"T": "T", "H": H},
                         [-(-H // self.geometry["gated_add"]["WG"]), "T", 1], [], label)

    def matmul(self, x: str, w: str, y: str, K: int, N: int, T="T", x_row0=0, y_row0=0,
               accumulate=False, bias: str | None = None, label="", x_stride: int | None = None, x_col0: int = 0,
               y_stride: int | None = None, y_col0: int = 0, heads: int = 1, x_hstride: int = 0,
               y_hstride: int = 0, split_y: list[tuple[str, int]] | None = None) -> int:
        """For t < T (and each head h < heads, whose weights are rows h*N .. of w):
            y[y_row0 + t, y_col0 + h*y_hstride + n] (+)= sum_k x[x_row0 + t, x_col0 + h*x_hstride + k] * w[h*N + n, k]
        (+ bias[h*N + n]); rows of x are x_stride values apart (default K), of y y_stride (default N).
        A weight split into row parts becomes one step per part, each writing its columns of y.
        split_y [(buffer, columns)] x 3 (y unused): the output's columns go to these buffers in turn, each
        [T, columns] (q, k and v from one joined weight)."""
        g = self.geometry["matmul"]
        parts = self.parts(w)
        if heads > 1 and len(parts) > 1:
            raise ValueError(f"{label}: a head-batched matmul over a split weight is not supported")
        defines = self.weight_defines(w) + (["BIAS"] if bias is not None else [])
        split = {}
        if split_y:
            if len(split_y) != 3 or sum(c for _, c in split_y) != N or accumulate or heads > 1 or y_stride:
                raise ValueError(f"{label}: split_y takes three buffers whose columns add up to N, without "
                                 "accumulate, heads or y_stride")
            y = split_y[0][0]
            split = {"split1": split_y[0][1], "split2": split_y[1][1], "split3": split_y[2][1]}
            defines.append("SPLIT_Y")
        if aligned(K, x_stride or K, x_col0, x_hstride):
            defines.append("W_ALIGNED")
        first = len(self.steps)
        for part in parts:
            n = N if len(parts) == 1 else part["rows"]
            bind = {"x": x, "w": part["tensor"], "y": y}
            if bias is not None:
                bind["bias"] = bias
            if split_y:
                bind.update(y2=split_y[1][0], y3=split_y[2][0])
            self.step("matmul", bind,
                      {"T": T, "K": K, "N": n, "x_row0": x_row0, "x_stride": x_stride or K, "x_col0": x_col0,
                       "x_hstride": x_hstride, "y_row0": y_row0, "y_stride": y_stride or N,
                       "y_col0": y_col0 + part["row0"], "y_hstride": y_hstride, "b_off": part["row0"],
                       "accumulate": int(accumulate), **split},
                      [-(-n // self.rows("matmul", n)), ceil_div(T, 1, g["TOKENS"]), heads], defines, label,
                      {"ROWS": self.rows("matmul", n)})
        return first

    def rope(self, x: str, inv_freq: str, n_heads: int, D: int, rot: int, attn_factor: float,
             row0=0, interleaved=False, rot_off: int = 0, positions: str = "positions", label="") -> int:
        """In place on x rows row0 .. row0 + T, which hold tokens at the positions in `positions` [T]."""
        return self.step("rope", {"inv_freq": inv_freq, "x": x, "positions": positions},
                         {"T": "T", "row0": row0, "n_heads": n_heads, "D": D,
                          "rot": rot, "rot_off": rot_off, "attn_factor": attn_factor},
                         [-(-(rot // 2) // self.geometry["rope"]["WG"]), n_heads, "T"],
                         ["INTERLEAVED"] if interleaved else [], label)

    def kv_write(self, src: str, cache: str, width: int, cache_rows: str = "cache_rows", label="") -> int:
        """Row t of src [T, width] into row cache_rows[t] of the cache."""
        return self.step("kv_write", {"src": src, "cache": cache, "cache_rows": cache_rows}, {"T": "T", "width": width},
                         [-(-width // self.geometry["kv_write"]["WG"]), "T", 1], [], label)

    def kv_store(self, k: str, v: str, k_cache: str, v_cache: str, n_kv: int, D: int, Dv: int,
                 rope: dict | None = None, positions: str = "positions", cache_rows: str = "cache_rows",
                 label="") -> int:
        """Row t of k [T, n_kv * D] and v [T, n_kv * Dv] into row cache_rows[t] of their caches, the keys
        rotated on the way when `rope` (rope_args) is given: one step where rope, and kv_write for keys and
        for values, were three."""
        bind = {"k": k, "v": v, "k_cache": k_cache, "v_cache": v_cache, "cache_rows": cache_rows}
        params = {"T": "T", "n_kv": n_kv, "D": D, "Dv": Dv, "rot": 0, "rot_off": 0, "attn_factor": 1.0}
        defines = []
        if rope:
            bind.update(inv_freq=rope["inv_freq"], positions=positions)
            params.update(rot=rope["rot"], rot_off=rope["rot_off"], attn_factor=rope["attn_factor"])
            defines = ["ROPE", *(["INTERLEAVED"] if rope["interleaved"] else [])]
        return self.step("kv_store", bind, params,
                         [-(-n_kv * max(D, Dv) // self.geometry["kv_store"]["WG"]), "T", 1], defines, label)

    def attention(self, q: str, k_cache: str, v_cache: str, out: str, n_heads: int, n_kv: int, D: int,
                  Dv: int, scale: float, window: int = 0, sinks: str | None = None, k_stride: int | None = None,
                  v_stride: int | None = None, positions: str = "positions", cache_rows: str = "cache_rows",
                  rope: dict | None = None, label="") -> int:
        """Query t at position positions[t] attends to its own sequence's cache rows, which start at
        cache_rows[t] - positions[t]. Cache rows are k_stride (default n_kv * D) and v_stride (default
        n_kv * Dv) values apart, so keys and values may share one buffer (MLA's latent cache). rope
        (rope_args): the queries are rotated as the kernel reads them (no step rotates q in place)."""
        lanes = self.geometry["attention"]["LANES"]
        vec4_keys = D % 4 == 0 and (k_stride or n_kv * D) % 4 == 0     # keys read as vec4
        bind = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": out, "positions": positions,
                "cache_rows": cache_rows}
        if sinks is not None:
            bind["sinks"] = sinks
        params = {"T": "T", "n_heads": n_heads, "n_kv": n_kv, "D": D, "Dv": Dv, "k_stride": k_stride or n_kv * D,
                  "v_stride": v_stride or n_kv * Dv, "window": window, "scale": scale}
        defines = (["SINKS"] if sinks else []) + (["VEC4"] if vec4_keys else [])
        if rope:
            bind["inv_freq"] = rope["inv_freq"]
            params.update(rot=rope["rot"], rot_off=rope["rot_off"], attn_factor=rope["attn_factor"])
            defines += ["ROPE_Q", *(["INTERLEAVED"] if rope["interleaved"] else [])]
        return self.step("attention", bind, params, [n_heads, "T", 1], defines, label,
                         consts={"DIMS_PER_LANE": -(-max(D, Dv) // lanes)})

    def router(self, logits: str, topk_ids: str, topk_w: str, E: int, K: int, scoring: str,
               normalize: bool, scale: float = 1.0, jitter_eps: float = 0.0, bias: str | None = None,
               n_group: int = 1, topk_group: int = 1, gather: tuple[str, str, str] | None = None, label="") -> int:
        """scoring: softmax | sigmoid | sparsemixer (PhiMoE) | sigmoid_grouped (DeepSeek-V3: choice by
        sigmoid + bias within the best topk_group of n_group groups). gather (offsets, order, active): the
        same step then sorts the pairs by expert as moe_gather does (one workgroup)."""
        if K > self.geometry["router"]["MAX_K"]:
            raise ValueError(f"top-{K} routing: the router kernel chooses at most {self.geometry['router']['MAX_K']}")
        if E > self.geometry["router"]["MAX_E"]:
            raise ValueError(f"{E} experts: the router kernel ranks at most {self.geometry['router']['MAX_E']}")
        bind = {"logits": logits, "topk_ids": topk_ids, "topk_w": topk_w}
        if bias is not None:
            bind["bias"] = bias
        defines = ["CHOICE_BIAS"] if bias else []
        dispatch = [ceil_div("T", 1, self.geometry["router"]["WG"]), 1, 1]
        if gather:
            bind.update(expert_offsets=gather[0], pair_order=gather[1], active_experts=gather[2])
            defines.append("GATHER")
            dispatch = [1, 1, 1]
        return self.step("router", bind,
                         {"T": "T", "E": E, "K": K,
                          "scoring": {"softmax": 0, "sigmoid": 1, "sparsemixer": 2, "sigmoid_grouped": 3}[scoring],
                          "normalize": int(normalize), "scale": scale, "jitter_eps": jitter_eps, "n_group": n_group,
                          "topk_group": topk_group, "strategy": 0, "capacity": 0},    # the trained routing
                         dispatch, defines, label)

    def moe_gather(self, topk_ids: str, offsets: str, order: str, active: str, E: int, K: int, label="") -> int:
        """Sorts the (token, k) pairs by expert (offsets [E + 1], order [T * K]) and lists the experts that
        have pairs (active [2E + 1]), which the expert kernels' dispatch is sized by."""
        if E > self.geometry["moe_gather"]["MAX_E"]:
            raise ValueError(f"{E} experts: moe_gather sorts at most {self.geometry['moe_gather']['MAX_E']}")
        return self.step("moe_gather", {"topk_ids": topk_ids, "expert_offsets": offsets, "pair_order": order,
                                        "active_experts": active},
                         {"pairs": ceil_div("T", K, 1), "E": E}, [1, 1, 1], [], label)

    def moe_experts(self, x: str, act: str, out: str, offsets: str, order: str, active: str, layer: int, E: int,
                    K: int, H: int, I: int, layout: dict, expert_dtype: str, activation: dict | None = None,
                    label="") -> tuple[int, int]:
        """Grouped expert FFN over the slab: act = silu(x W_gate) * (x W_up), out = act W_down, with the
        slot's biases when the layout has them; per piece of the experts (layout["pieces"]), the later
        pieces adding into out. activation {"kind": "clamped_swiglu", "alpha", "limit"} selects GPT-OSS's
        activation. Returns the range of its steps."""
        pieces, rows = layout["pieces"], layout["piece_rows"]
        defines = [fmt(expert_dtype).define] if expert_dtype != "f32" else []
        if "gate_bias" in layout:
            defines.append("EXPERT_BIAS")
        word = {r: layout[r]["word_offset"] if r in layout else 0 for r in ("gate_bias", "up_bias", "down_bias")}
        act_defines, alpha, limit = [], 1.0, 0.0
        if activation and activation["kind"] == "clamped_swiglu":
            act_defines, alpha, limit = ["CLAMPED_SWIGLU"], activation["alpha"], activation["limit"]
        grouped = {"w": "experts", "bank": "expert_bank", "slots": "expert_slots", "expert_offsets": offsets,
                   "pair_order": order, "active_experts": active}
        experts_y = {"min": ["bank_experts", ceil_div("T", K, 1)]}    # no more experts than pairs
        gu, dn = self.geometry["moe_gate_up"], self.geometry["moe_down"]
        first = len(self.steps)
        for piece in range(pieces):
            Ip = min(rows, I - piece * rows)      # this piece's rows of the intermediate dimension
            common = {"layer": layer, "E": E, "K": K, "H": H, "I": Ip, "pieces": pieces, "piece": piece,
                      "slot_elems": layout["slot_elems"]}
            tag = f"{label}.piece{piece}" if pieces > 1 else label
            gu_defines = defines + act_defines + (["W_ALIGNED"] if aligned(H) else [])
            self.step("moe_gate_up", {"x": x, "act": act, **grouped},
                      {**common, "gate_off": layout["gate"]["elem_offset"], "up_off": layout["up"]["elem_offset"],
                       "gate_bias_off": word["gate_bias"], "up_bias_off": word["up_bias"], "alpha": alpha,
                       "limit": limit},
                      [-(-Ip // self.rows("moe_gate_up", Ip)), experts_y, ceil_div("T", 1, gu["TILE"])], gu_defines,
                      f"{tag}.gate_up", {"ROWS": self.rows("moe_gate_up", Ip)})
            self.step("moe_down", {"x": act, "y": out, **grouped},
                      {**common, "down_off": layout["down"]["elem_offset"], "down_bias_off": word["down_bias"],
                       "accumulate": int(piece > 0)},
                      [-(-H // self.rows("moe_down", H)), experts_y, ceil_div("T", 1, dn["TILE"])],
                      defines + (["W_ALIGNED"] if aligned(Ip) else []), f"{tag}.down", {"ROWS": self.rows("moe_down", H)})
        return first, len(self.steps)

    def scatter_add(self, expert_out: str, topk_w: str, y: str, K: int, H: int, label="") -> int:
        return self.step("scatter_add", {"expert_out": expert_out, "topk_w": topk_w, "y": y},
                         {"T": "T", "K": K, "H": H}, [-(-H // self.geometry["scatter_add"]["WG"]), "T", 1], [], label)
