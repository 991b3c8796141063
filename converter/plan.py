"""The execution plan: named buffers and an ordered list of kernel steps, written into the package.

A step names a kernel in shaders/, its preprocessor defines, what each of the kernel's bindings is bound
to (a plan buffer, a package tensor, or a runtime buffer such as the expert slab), the fields of its
`Params` uniform and its workgroup counts. Sizes that depend on the call are plan expressions
(engine/expr.py): an int, a variable, or [var, mul, div] = ceil(var * mul / div). Runtime variables:
    T           tokens in this forward call (<= the runtime's chunk size)
    pos         absolute position of the first of them
    logit_row0  first row of the final hidden state that gets logits
    n_logits    how many rows get logits (1 while generating, T for Engine.logits)
    slot0, n_slots  the expert-slot range of the bound slab buffer (set by the runtime's expert cache)
Buffer shapes may use "T" (the chunk size) and "S" (the runtime's maximum sequence length).

This module is the one place in Python that knows each kernel's parameters and dispatch.
"""
from __future__ import annotations

RUNTIME_BUFFERS = ("experts", "expert_slots")   # provided by the runtime's expert cache


def ceil_div(var, mul: int, div: int):
    return [var, mul, div]


class Plan:
    def __init__(self, tensor_dtypes: dict[str, str]):
        self.tensor_dtypes = tensor_dtypes       # package tensor name -> "f32" | "f16"
        self.buffers: dict[str, dict] = {}
        self.steps: list[dict] = []

    def buffer(self, name: str, shape: list, dtype: str = "f32") -> str:
        if name in self.buffers and self.buffers[name] != {"shape": shape, "dtype": dtype}:
            raise ValueError(f"plan buffer {name} declared twice with different shapes")
        self.buffers[name] = {"shape": shape, "dtype": dtype}
        return name

    def step(self, kernel: str, bind: dict, params: dict, dispatch: list, defines=(), label: str = ""):
        for target in bind.values():
            if target not in self.buffers and target not in self.tensor_dtypes and target not in RUNTIME_BUFFERS:
                raise ValueError(f"step {label or kernel} binds unknown buffer {target!r}")
        self.steps.append({"kernel": kernel, "defines": sorted(defines), "bind": bind, "params": params,
                           "dispatch": dispatch, "label": label})

    def weight_defines(self, tensor: str) -> list[str]:
        return ["W_F16"] if self.tensor_dtypes[tensor] == "f16" else []

    def to_json(self) -> dict:
        return {"buffers": self.buffers, "steps": self.steps}

    # --- one method per kernel ------------------------------------------------------------------

    def embed(self, ids: str, w: str, y: str, H: int, label="embed"):
        self.step("embed", {"ids": ids, "w": w, "y": y}, {"T": "T", "H": H},
                  [-(-H // 64), "T", 1],
                  self.weight_defines(w), label)

    def rmsnorm(self, x: str | None, weight: str, y: str, rows, H: int, eps: float, row0=0, bias: str | None = None,
                label=""):
        """Rows row0 .. row0 + rows (exprs) of length H. x=None normalises y in place. A bias makes it
        LayerNorm (mean subtracted, bias added)."""
        bind = {"weight": weight, "y": y}
        defines = [] if x is not None else ["IN_PLACE"]
        if x is not None:
            bind["x"] = x
        if bias is not None:
            bind["bias"] = bias
            defines.append("LAYERNORM")
        self.step("rmsnorm", bind, {"rows": rows, "row0": row0, "H": H, "eps": eps}, [rows, 1, 1], defines, label)

    def silu_mul(self, gate: str, up: str, y: str, I: int, label=""):
        """y = silu(gate) * up elementwise over [T, I]: the SwiGLU of a dense FFN."""
        self.step("silu_mul", {"gate": gate, "up": up, "y": y}, {"n": ceil_div("T", I, 1)},
                  [ceil_div("T", I, 256), 1, 1], [], label)

    def gated_add(self, gate_logit: str, x: str, y: str, H: int, label=""):
        """y[t] += sigmoid(gate_logit[t]) * x[t]: a gated shared expert (Qwen2-MoE)."""
        self.step("gated_add", {"gate_logit": gate_logit, "x": x, "y": y}, {"T": "T", "H": H},
                  [-(-H // 64), "T", 1], [], label)

    def matmul(self, x: str, w: str, y: str, K: int, N: int, T="T", x_row0=0, y_row0=0,
               accumulate=False, bias: str | None = None, label=""):
        """y[y_row0 + t, :N] (+)= x[x_row0 + t, :K] @ w[N, K]^T (+ bias) for t < T."""
        bind = {"x": x, "w": w, "y": y}
        defines = self.weight_defines(w)
        if bias is not None:
            bind["bias"] = bias
            defines.append("BIAS")
        self.step("matmul", bind,
                  {"T": T, "K": K, "N": N, "x_row0": x_row0, "y_row0": y_row0, "accumulate": int(accumulate)},
                  [-(-N // 4), ceil_div(T, 1, 8), 1], defines, label)

    def rope(self, x: str, inv_freq: str, n_heads: int, D: int, rot: int, attn_factor: float,
             row0=0, interleaved=False, rot_off: int = 0, label=""):
        """In place on x rows row0 .. row0 + T, which hold positions pos .. pos + T."""
        self.step("rope", {"inv_freq": inv_freq, "x": x},
                  {"T": "T", "row0": row0, "pos0": "pos", "n_heads": n_heads, "D": D,
                   "rot": rot, "rot_off": rot_off, "attn_factor": attn_factor},
                  [-(-(rot // 2) // 32), n_heads, "T"], ["INTERLEAVED"] if interleaved else [], label)

    def attention(self, q: str, k_cache: str, v_cache: str, out: str, n_heads: int, n_kv: int, D: int,
                  Dv: int, scale: float, window: int = 0, sinks: str | None = None, label=""):
        if D > 256 or Dv > 256:
            raise ValueError("attention head dims above 256 are not supported")
        bind = {"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": out}
        if sinks is not None:
            bind["sinks"] = sinks
        self.step("attention", bind,
                  {"T": "T", "pos0": "pos", "n_heads": n_heads, "n_kv": n_kv, "D": D, "Dv": Dv,
                   "window": window, "scale": scale},
                  [n_heads, "T", 1], ["SINKS"] if sinks else [], label)

    def router(self, logits: str, topk_ids: str, topk_w: str, E: int, K: int, scoring: str,
               normalize: bool, scale: float = 1.0, jitter_eps: float = 0.0, bias: str | None = None,
               n_group: int = 1, topk_group: int = 1, label=""):
        """scoring: softmax | sigmoid | sparsemixer (PhiMoE) | sigmoid_grouped (DeepSeek-V3: choice by
        sigmoid + bias within the best topk_group of n_group groups)."""
        bind = {"logits": logits, "topk_ids": topk_ids, "topk_w": topk_w}
        if bias is not None:
            bind["bias"] = bias
        self.step("router", bind,
                  {"T": "T", "E": E, "K": K,
                   "scoring": {"softmax": 0, "sigmoid": 1, "sparsemixer": 2, "sigmoid_grouped": 3}[scoring],
                   "normalize": int(normalize), "scale": scale, "jitter_eps": jitter_eps, "n_group": n_group,
                   "topk_group": topk_group},
                  [ceil_div("T", 1, 64), 1, 1], ["CHOICE_BIAS"] if bias else [], label)

    def mla_assemble_k(self, k_nope: str, k_rot: str, k_cache: str, n_heads: int, d_nope: int, d_rot: int,
                       label=""):
        """K cache rows pos.. of multi-head latent attention: [n_heads, d_nope + d_rot] per token, the
        per-head k_nope [T, n_heads * d_nope] then the shared, rotated k_rot [T, d_rot]."""
        D = d_nope + d_rot
        self.step("mla_assemble_k", {"k_nope": k_nope, "k_rot": k_rot, "k_cache": k_cache},
                  {"T": "T", "pos0": "pos", "n_heads": n_heads, "d_nope": d_nope, "d_rot": d_rot},
                  [-(-(n_heads * D) // 64), "T", 1], [], label)

    def moe_gather(self, topk_ids: str, offsets: str, order: str, E: int, K: int, label=""):
        self.step("moe_gather", {"topk_ids": topk_ids, "expert_offsets": offsets, "pair_order": order},
                  {"pairs": ceil_div("T", K, 1), "E": E}, [1, 1, 1], [], label)

    def moe_experts(self, x: str, act: str, out: str, offsets: str, order: str, layer: int, E: int, K: int,
                    H: int, I: int, layout: dict, expert_dtype: str, activation: dict | None = None, label=""):
        """Grouped expert FFN over the slab: act = silu(x W_gate) * (x W_up), out = act W_down, with the
        slot's biases when the layout has them. activation {"kind": "clamped_swiglu", "alpha", "limit"}
        selects GPT-OSS's activation."""
        common = {"layer": layer, "E": E, "K": K, "H": H, "I": I,
                  "slot0": "slot0", "n_slots": "n_slots", "slot_elems": layout["slot_elems"]}
        defines = ["W_F16"] if expert_dtype == "f16" else []
        if "gate_bias" in layout:
            defines.append("EXPERT_BIAS")
        word = {r: layout[r]["word_offset"] if r in layout else 0 for r in ("gate_bias", "up_bias", "down_bias")}
        act_defines, alpha, limit = [], 1.0, 0.0
        if activation and activation["kind"] == "clamped_swiglu":
            act_defines, alpha, limit = ["CLAMPED_SWIGLU"], activation["alpha"], activation["limit"]
        grouped = {"w": "experts", "slots": "expert_slots", "expert_offsets": offsets, "pair_order": order}
        self.step("moe_gate_up", {"x": x, "act": act, **grouped},
                  {**common, "gate_off": layout["gate"]["elem_offset"], "up_off": layout["up"]["elem_offset"],
                   "gate_bias_off": word["gate_bias"], "up_bias_off": word["up_bias"], "alpha": alpha, "limit": limit},
                  [-(-I // 4), E, ceil_div("T", 1, 8)], defines + act_defines, f"{label}.gate_up")
        self.step("moe_down", {"act": act, "y": out, **grouped},
                  {**common, "down_off": layout["down"]["elem_offset"], "down_bias_off": word["down_bias"]},
                  [-(-H // 4), E, ceil_div("T", 1, 8)], defines, f"{label}.down")

    def scatter_add(self, expert_out: str, topk_w: str, y: str, K: int, H: int, label=""):
        self.step("scatter_add", {"expert_out": expert_out, "topk_w": topk_w, "y": y},
                  {"T": "T", "K": K, "H": H}, [-(-H // 64), "T", 1], [], label)
