"""DeepSeek-V3 (and Kimi K2, the same architecture): multi-head latent attention, sigmoid expert scores
chosen with e_score_correction_bias inside the best topk_group of n_group groups, routed_scaling_factor,
shared experts beside the routed ones, and the first first_k_dense_replace layers dense.

Multi-head latent attention caches the latent. Queries come from a low-rank path (q_a_proj -> RMSNorm ->
q_b_proj) or q_proj; the checkpoint's keys and values are expanded from the compressed latent
c = RMSNorm(kv_a_proj(x)[:kv_lora_rank]) as k = [W_uk[h] c per head, rope(kv_a_proj(x)[kv_lora_rank:])],
v = W_uv[h] c. Since q.k = (W_uk[h]^T q_nope) . c + q_rot . k_rot, the up-projections are absorbed: the
KV cache row of a position is [c | k_rot] (kv_lora_rank + qk_rope_head_dim values, shared by all heads),
each query head becomes [W_uk[h]^T q_nope | q_rot], attention is multi-query over those rows with the
latent as the value, and W_uv[h] is applied to each head's output afterwards. The converter splits
kv_a_proj_with_mqa (latent | rotary rows), q_b_proj / q_proj (per-head nope | rope rows) and kv_b_proj
(W_uk transposed per head, W_uv), so every step is a matmul."""
from __future__ import annotations

import math

import numpy as np

from ..plan import Plan, rope_args
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

    def joined_tensors(self) -> dict[str, list[str]]:
        return {}                 # multi-head latent attention has no q, k and v projections to join

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

    def transforms(self, name: str) -> bool:
        return any(part in name for part in ("kv_a_proj_with_mqa", "kv_b_proj.weight", "q_b_proj.weight",
                                                "q_proj.weight"))

    def transform_dense(self, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
        nh, dn, dr, dv, r = self.dims.num_heads, self.d_nope, self.d_rot, self.d_v, self.kv_lora
        if "kv_a_proj_with_mqa" in name:        # [r + d_rot, ...] -> latent part, rotary key part
            base, kind = name.replace("kv_a_proj_with_mqa", "kv_a_proj").rsplit(".", 1)
            return {f"{base}.latent.{kind}": array[:r], f"{base}.rope.{kind}": array[r:]}
        base = name[:-len(".weight")]
        if name.endswith("kv_b_proj.weight"):     # [nh * (d_nope + d_v), r] -> W_uk^T [nh * r, d_nope], W_uv [nh * d_v, r]
            per_head = array.reshape(nh, dn + dv, r)
            return {base + ".k_absorb.weight": per_head[:, :dn].transpose(0, 2, 1).reshape(nh * r, dn),
                    base + ".v.weight": per_head[:, dn:].reshape(nh * dv, r)}
        if name.endswith(("q_b_proj.weight", "q_proj.weight")):   # [nh * (d_nope + d_rot), K] -> nope, rope rows
            per_head = array.reshape(nh, dn + dr, -1)
            return {base + ".nope.weight": per_head[:, :dn].reshape(nh * dn, -1),
                    base + ".rope.weight": per_head[:, dn:].reshape(nh * dr, -1)}
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
        H, nh, dn, dr, dv, r, eps = d.hidden_size, d.num_heads, self.d_nope, self.d_rot, self.d_v, self.kv_lora, d.rms_norm_eps
        D = r + dr                                   # a latent cache row, and an absorbed query head
        bias = self.attention_bias_parts(self.config)
        b = {part: (a + f"{part}_proj.bias" if part in bias else None) for part in ("q_a", "o")}
        kv_bias = "kv_a" in bias
        q = plan.buffer("mla_q", ["T", nh * D])                  # [T, nh, W_uk^T q_nope | q_rot]
        q_nope = plan.buffer("mla_q_nope", ["T", nh * dn])
        kv = plan.buffer(f"kv_latent.{l}", ["S", D])             # [S, latent | rotated shared key]
        out_latent = plan.buffer("mla_out_latent", ["T", nh * r])
        attn = plan.buffer("attn", ["T", nh * dv])
        self.block_norm(plan, self.attn_norm.format(l=l), f"L{l}.attn_norm")
        if self.q_lora:
            src, Kq, proj = plan.buffer("mla_q_latent", ["T", self.q_lora]), self.q_lora, a + "q_b_proj"
            plan.matmul("xn", a + "q_a_proj.weight", src, H, self.q_lora, bias=b["q_a"], label=f"L{l}.q_a_proj")
            plan.rmsnorm(None, a + "q_a_layernorm.weight", src, "T", self.q_lora, eps, label=f"L{l}.q_a_norm")
        else:
            src, Kq, proj = "xn", H, a + "q_proj"
        plan.matmul(src, proj + ".nope.weight", q_nope, Kq, nh * dn, label=f"L{l}.q_nope")
        plan.matmul(src, proj + ".rope.weight", q, Kq, dr, y_stride=nh * D, y_col0=r, heads=nh, y_hstride=D,
                    label=f"L{l}.q_rope")
        plan.matmul(q_nope, a + "kv_b_proj.k_absorb.weight", q, dn, r, x_stride=nh * dn, heads=nh, x_hstride=dn,
                    y_stride=nh * D, y_hstride=D, label=f"L{l}.q_absorb")
        kv_new = plan.buffer("kv_new", ["T", D])                 # this pass's tokens' cache rows
        plan.matmul("xn", a + "kv_a_proj.latent.weight", kv_new, H, r, y_stride=D,
                    bias=a + "kv_a_proj.latent.bias" if kv_bias else None, label=f"L{l}.kv_latent")
        plan.rmsnorm(None, a + "kv_a_layernorm.weight", kv_new, "T", r, eps, stride=D, label=f"L{l}.kv_norm")
        plan.matmul("xn", a + "kv_a_proj.rope.weight", kv_new, H, dr, y_stride=D, y_col0=r,
                    bias=a + "kv_a_proj.rope.bias" if kv_bias else None, label=f"L{l}.k_rope")
        factor = rope_tables(self.config, dr)[1]
        interleaved = bool(self.config.get("rope_interleave", True))
        plan.rope(kv_new, "rope.inv_freq", 1, D, dr, factor, interleaved=interleaved, rot_off=r, label=f"L{l}.rope_k")
        plan.kv_write(kv_new, kv, D, label=f"L{l}.kv_store")
        plan.attention(q, kv, kv, out_latent, nh, 1, D, r, self.softmax_scale(), k_stride=D, v_stride=D,
                       rope=rope_args("rope.inv_freq", dr, factor, rot_off=r, interleaved=interleaved),
                       label=f"L{l}.attention")                   # the queries rotated as attention reads them
        plan.matmul(out_latent, a + "kv_b_proj.v.weight", attn, r, dv, x_stride=nh * r, heads=nh, x_hstride=r,
                    y_stride=nh * dv, y_hstride=dv, label=f"L{l}.v_up")
        plan.matmul(attn, a + "o_proj.weight", "h", nh * dv, H, accumulate=True, bias=b["o"], label=f"L{l}.o_proj")
