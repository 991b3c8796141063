"""OLMoE: softmax router, top-k without renormalisation by default, and QK-norm over the whole q and k
projections (not per head)."""
from .base import DecoderFamily


class Olmoe(DecoderFamily):
    name = "olmoe"
    model_types = ("olmoe",)
    real_models = "OLMoE-1B-7B (0924, 0125, Instruct)"
    qk_norm = "full"
    norm_topk_default = False
    moe_intermediate_key = "intermediate_size"

    def read_dims(self, c):
        if c.get("clip_qkv"):
            from ..errors import ConversionError
            raise ConversionError("olmoe: clip_qkv is not supported yet")
        return super().read_dims(c)
