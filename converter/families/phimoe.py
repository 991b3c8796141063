"""PhiMoE (Phi-3.5-MoE, Phi-mini-MoE): Mixtral's tensor layout with LayerNorm (with bias) for the block
and final norms, optional attention and LM-head biases, and sparsemixer routing: at inference each of the
two experts is the best remaining one, weighted by its softmax among the experts within a relative
threshold (router_jitter_noise) of it, with no renormalisation."""
from .base import MoE
from .mixtral import Mixtral


class Phimoe(Mixtral):
    name = "phimoe"
    model_types = ("phimoe",)
    real_models = "Phi-3.5-MoE-instruct, Phi-mini-MoE-instruct"
    layer_norm = True

    def read_moe(self, c: dict) -> MoE:
        moe = super().read_moe(c)
        moe.scoring, moe.norm_topk_prob = "sparsemixer", False
        moe.jitter_eps = float(c.get("router_jitter_noise") or 0.0)
        return moe
