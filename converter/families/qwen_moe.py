"""Qwen-MoE families. Both route with a softmax over all experts and top-k, renormalise only with
norm_topk_prob, and may keep some layers dense (decoder_sparse_step, mlp_only_layers).
Qwen3-MoE adds QK-norm per head; Qwen2-MoE adds q/k/v biases and a shared expert behind a sigmoid gate."""
from .base import MoE, DecoderFamily


class Qwen3Moe(DecoderFamily):
    name = "qwen3_moe"
    model_types = ("qwen3_moe",)
    real_models = "Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B"
    qk_norm = "head"
    norm_topk_default = False


class Qwen2Moe(DecoderFamily):
    name = "qwen2_moe"
    model_types = ("qwen2_moe",)
    real_models = "Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B"
    norm_topk_default = False

    def attention_bias_parts(self, c: dict) -> set[str]:
        return {"q", "k", "v"} if c.get("qkv_bias", True) else set()

    def read_moe(self, c: dict) -> MoE:
        moe = super().read_moe(c)
        moe.shared_expert_intermediate_size = int(c.get("shared_expert_intermediate_size") or 0)
        moe.shared_expert_gate = moe.shared_expert_intermediate_size > 0
        return moe
