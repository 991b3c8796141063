"""DeepSeek-V3 (and Kimi K2, the same architecture): multi-head latent attention, sigmoid expert scores
chosen with e_score_correction_bias inside the best topk_group of n_group groups, routed_scaling_factor,
shared experts beside the routed ones, and the first first_k_dense_replace layers dense.

MLA runs in its expanded form: queries come from a low-rank path (q_a_proj -> RMSNorm -> q_b_proj) or
q_proj; keys and values from the compressed latent c = RMSNorm(kv_a_proj(x)[:kv_lora_rank]):
k = [kv_b_proj_k(c) per head, rope(kv_a_proj(x)[kv_lora_rank:]) shared], v = kv_b_proj_v(c). The
converter splits kv_a_proj_with_mqa and kv_b_proj into those parts so every step is a plain matmul.
The KV cache holds expanded keys and values (caching the latent instead is a later optimisation)."""
from __future__ import annotations

import math

import numpy as np

from ..plan import Plan
from ..rope import rope_parameters
from .base import DecoderFamily, MoE, need

ATTN = "model.layers.{l}.self_attn."


class DeepseekV3(DecoderFamily):
    name = "deepseek_v3"
    model_types = ("deepseek_v3", "kimi_k2")
    real_models = "DeepSeek-V3, DeepSeek-V3.1, DeepSeek-R1, Kimi K2 (same architecture)"
    num_experts_key = ("n_routed_experts", "num_local_experts")
    shared_mlp = {"gate": "model.layers.{l}.mlp.shared_experts.gate_proj.weight",
                  "up": "model.layers.{l}.mlp.shared_experts.up_proj.weight",
                  "down": "model.layers.{l}.mlp.shared_experts.down_proj.weight"}

    def __init__(self, config: dict):
        c = config
        self.q_lora = c.get("q_lora_rank") or 0
        self.kv_lora = need(c, "kv_lora_rank")
        self.d_nope, self.d_rot = need(c, "qk_nope_head_dim"), need(c, "qk_rope_head_dim")
        self.d_v = need(c, "v_head_dim")
        super().__init__({**c, "head_dim": self.d_rot})   # the rotary dims: what RoPE tables are built for

    def read_moe(self, c: dict) -> MoE:
        moe = super().read_moe(c)
        moe.scoring = "sigmoid_grouped"
        moe.n_group, moe.topk_group = int(c.get("n_group") or 1), int(c.get("topk_group") or 1)
        moe.shared_expert_intermediate_size = moe.intermediate_size * int(c.get("n_shared_experts") or 0)
        return moe

    def moe_layer_indices(self, c: dict) -> list[int]:
        first, freq = int(c.get("first_k_dense_replace") or 0), int(c.get("moe_layer_freq") or 1)
        return [l for l in range(self.dims.num_layers) if l >= first and l % freq == 0]

    def router_choice_bias(self, l: int) -> str:
        return f"model.layers.{l}.mlp.gate.e_score_correction_bias"

    def attention_bias_parts(self, c: dict) -> set[str]:
        return {"q_a", "kv_a", "o"} if c.get("attention_bias") else set()

    def attention_tensors(self, l: int) -> dict[str, tuple[int, ...]]:
        H, nh = self.dims.hidden_size, self.dims.num_heads
        a, qk = ATTN.format(l=l), self.d_nope + self.d_rot
        out = {a + "kv_a_proj_with_mqa.weight": (self.kv_lora + self.d_rot, H), a + "kv_a_layernorm.weight": (self.kv_lora,),
               a + "kv_b_proj.weight": (nh * (self.d_nope + self.d_v), self.kv_lora), a + "o_proj.weight": (H, nh * self.d_v)}
        if self.q_lora:
            out.update({a + "q_a_proj.weight": (self.q_lora, H), a + "q_a_layernorm.weight": (self.q_lora,),
                        a + "q_b_proj.weight": (nh * qk, self.q_lora)})
        else:
            out[a + "q_proj.weight"] = (nh * qk, H)
        if self.attention_bias_parts(self.config):
            out.update({a + "kv_a_proj_with_mqa.bias": (self.kv_lora + self.d_rot,), a + "o_proj.bias": (H,)})
            if self.q_lora:
                out[a + "q_a_proj.bias"] = (self.q_lora,)
        return out

    def transform_dense(self, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
        if "kv_a_proj_with_mqa" in name:        # [kv_lora + d_rot, ...] -> latent part, rotary key part
            base = name.replace("kv_a_proj_with_mqa", "kv_a_proj")
            kind = name.rsplit(".", 1)[1]
            return {f"{base[:-len(kind) - 1]}.latent.{kind}": array[:self.kv_lora],
                    f"{base[:-len(kind) - 1]}.rope.{kind}": array[self.kv_lora:]}
        if name.endswith("kv_b_proj.weight"):     # [nh * (d_nope + d_v), r] -> k [nh * d_nope, r], v [nh * d_v, r]
            per_head = array.reshape(self.dims.num_heads, self.d_nope + self.d_v, self.kv_lora)
            base = name[:-len(".weight")]
            return {base + ".k.weight": per_head[:, :self.d_nope].reshape(-1, self.kv_lora),
                    base + ".v.weight": per_head[:, self.d_nope:].reshape(-1, self.kv_lora)}
        return {name: array}

    def softmax_scale(self) -> float:
        scale = (self.d_nope + self.d_rot) ** -0.5
        p = rope_parameters(self.config)
        if p["rope_type"] != "default" and p.get("mscale_all_dim"):
            m = 0.1 * p["mscale_all_dim"] * math.log(p["factor"]) + 1.0 if p["factor"] > 1 else 1.0
            scale *= m * m
        return scale

    def attention_block(self, plan: Plan, l: int) -> None:
        from ..rope import rope_tables
        d, a = self.dims, ATTN.format(l=l)
        H, nh, dn, dr, dv, eps = d.hidden_size, d.num_heads, self.d_nope, self.d_rot, self.d_v, d.rms_norm_eps
        bias = self.attention_bias_parts(self.config)
        b = {part: (a + f"{part}_proj.bias" if part in bias else None) for part in ("q_a", "o")}
        q = plan.buffer("q", ["T", nh * (dn + dr)])
        kc, vc = plan.buffer(f"k_cache.{l}", ["S", nh * (dn + dr)]), plan.buffer(f"v_cache.{l}", ["S", nh * dv])
        latent, k_rot = plan.buffer("mla_latent", ["T", self.kv_lora]), plan.buffer("mla_k_rot", ["T", dr])
        k_nope, attn = plan.buffer("mla_k_nope", ["T", nh * dn]), plan.buffer("attn", ["T", nh * dv])
        self.block_norm(plan, self.attn_norm.format(l=l), f"L{l}.attn_norm")
        if self.q_lora:
            qa = plan.buffer("mla_q_latent", ["T", self.q_lora])
            plan.matmul("xn", a + "q_a_proj.weight", qa, H, self.q_lora, bias=b["q_a"], label=f"L{l}.q_a_proj")
            plan.rmsnorm(None, a + "q_a_layernorm.weight", qa, "T", self.q_lora, eps, label=f"L{l}.q_a_norm")
            plan.matmul(qa, a + "q_b_proj.weight", q, self.q_lora, nh * (dn + dr), label=f"L{l}.q_b_proj")
        else:
            plan.matmul("xn", a + "q_proj.weight", q, H, nh * (dn + dr), label=f"L{l}.q_proj")
        kv_bias = "kv_a" in bias
        plan.matmul("xn", a + "kv_a_proj.latent.weight", latent, H, self.kv_lora,
                    bias=a + "kv_a_proj.latent.bias" if kv_bias else None, label=f"L{l}.kv_a_latent")
        plan.rmsnorm(None, a + "kv_a_layernorm.weight", latent, "T", self.kv_lora, eps, label=f"L{l}.kv_a_norm")
        plan.matmul("xn", a + "kv_a_proj.rope.weight", k_rot, H, dr,
                    bias=a + "kv_a_proj.rope.bias" if kv_bias else None, label=f"L{l}.kv_a_rope")
        factor = rope_tables(self.config, dr)[1]
        interleaved = bool(self.config.get("rope_interleave", True))
        plan.rope(q, "rope.inv_freq", nh, dn + dr, dr, factor, interleaved=interleaved, rot_off=dn, label=f"L{l}.rope_q")
        plan.rope(k_rot, "rope.inv_freq", 1, dr, dr, factor, interleaved=interleaved, label=f"L{l}.rope_k")
        plan.matmul(latent, a + "kv_b_proj.k.weight", k_nope, self.kv_lora, nh * dn, label=f"L{l}.kv_b_k")
        plan.mla_assemble_k(k_nope, k_rot, kc, nh, dn, dr, label=f"L{l}.assemble_k")
        plan.matmul(latent, a + "kv_b_proj.v.weight", vc, self.kv_lora, nh * dv, y_row0="pos", label=f"L{l}.kv_b_v")
        plan.attention(q, kc, vc, attn, nh, nh, dn + dr, dv, self.softmax_scale(), label=f"L{l}.attention")
        plan.matmul(attn, a + "o_proj.weight", "h", nh * dv, H, accumulate=True, bias=b["o"], label=f"L{l}.o_proj")
