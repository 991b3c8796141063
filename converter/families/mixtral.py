"""Mixtral: softmax router over all experts, top-k, weights renormalised over the k; SwiGLU experts."""
from .base import DecoderFamily


class Mixtral(DecoderFamily):
    name = "mixtral"
    model_types = ("mixtral",)
    real_models = "Mixtral-8x7B, Mixtral-8x22B (and their Instruct versions)"
    router = ("model.layers.{l}.block_sparse_moe.gate.weight", "model.layers.{l}.mlp.gate.weight")
    expert_gate = ("model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight",
                   "model.layers.{l}.mlp.experts.{e}.gate_proj.weight")
    expert_up = ("model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight",
                 "model.layers.{l}.mlp.experts.{e}.up_proj.weight")
    expert_down = ("model.layers.{l}.block_sparse_moe.experts.{e}.w2.weight",
                   "model.layers.{l}.mlp.experts.{e}.down_proj.weight")
    num_experts_key = ("num_local_experts", "num_experts")
    moe_intermediate_key = "intermediate_size"

    def read_moe(self, c):
        moe = super().read_moe(c)
        moe.norm_topk_prob = True   # Mixtral always renormalises the top-k weights
        return moe
