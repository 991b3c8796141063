"""GPT-OSS: attention sinks, sliding-window and full attention alternating by layer_types, biases on
q/k/v/o and the router, a softmax over the top-k router logits, clamped SwiGLU experts ((up + 1) *
gate * sigmoid(alpha * gate), with biases), YaRN RoPE.

Experts come either as transformers saves them, fused and input-major: gate_up_proj [E, H, 2I] with
gate and up interleaved along the last axis, down_proj [E, I, H]; or as the released checkpoints store
them, MXFP4 blocks and scales (output-major): gate_up_proj_blocks [E, 2I, H/32, 16], *_scales
[E, 2I, H/32], down_proj_blocks [E, H, I/32, 16]. Both become the slot layout gate [I, H], up [I, H],
down [H, I] plus f32 biases."""
from __future__ import annotations

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import ConversionError
from ..mxfp4 import MxBlocks
from .base import DecoderFamily, MoE


class GptOss(DecoderFamily):
    name = "gpt_oss"
    model_types = ("gpt_oss",)
    real_models = "gpt-oss-20b, gpt-oss-120b"
    router = ("model.layers.{l}.mlp.router.weight",)
    num_experts_key = ("num_local_experts", "num_experts")
    moe_intermediate_key = "intermediate_size"
    experts = "model.layers.{l}.mlp.experts."

    def attention_bias_parts(self, c: dict) -> set[str]:
        return {"q", "k", "v", "o"} if c.get("attention_bias", True) else set()

    def read_moe(self, c: dict) -> MoE:
        moe = super().read_moe(c)
        moe.norm_topk_prob = True     # softmax over the k chosen logits = renormalised softmax
        return moe

    def layer_window(self, l: int) -> int:
        types = self.config.get("layer_types")
        if types is None:              # transformers' default: sliding, full, sliding, ...
            sliding = l % 2 == 0
        else:
            if not isinstance(types, list) or len(types) <= l:
                raise ConversionError(f"config.json: layer_types must name all {self.dims.num_layers} layers")
            sliding = types[l] == "sliding_attention"
        return int(self.config.get("sliding_window") or 0) if sliding else 0

    def attention_sinks(self, l: int) -> str:
        return f"model.layers.{l}.self_attn.sinks"

    def router_bias(self, l: int) -> str:
        return f"model.layers.{l}.mlp.router.bias"

    def expert_activation(self) -> dict:
        return {"kind": "clamped_swiglu", "alpha": float(self.config.get("swiglu_alpha", 1.702)),
                "limit": float(self.config.get("swiglu_limit", 7.0))}

    def expert_shapes(self) -> dict[str, tuple[int, ...]]:
        I, H = self.moe.intermediate_size, self.dims.hidden_size
        return {"gate": (I, H), "up": (I, H), "down": (H, I), "gate_bias": (I,), "up_bias": (I,), "down_bias": (H,)}

    def _mxfp4(self, ckpt: Checkpoint, l: int) -> bool:
        return ckpt.has(self.experts.format(l=l) + "gate_up_proj_blocks")

    def native_expert_format(self, ckpt: Checkpoint) -> str | None:
        return "mxfp4" if all(self._mxfp4(ckpt, l) for l in self.moe.moe_layers) else None

    def expected(self, ckpt: Checkpoint, l: int) -> dict[str, tuple[int, ...]]:
        E, I, H = self.moe.num_experts, self.moe.intermediate_size, self.dims.hidden_size
        p = self.experts.format(l=l)
        shapes = {p + "gate_up_proj_bias": (E, 2 * I), p + "down_proj_bias": (E, H)}
        if self._mxfp4(ckpt, l):
            if H % 32 or I % 32:
                raise ConversionError("MXFP4 experts need hidden and intermediate sizes that are multiples of 32")
            shapes.update({p + "gate_up_proj_blocks": (E, 2 * I, H // 32, 16), p + "gate_up_proj_scales": (E, 2 * I, H // 32),
                           p + "down_proj_blocks": (E, H, I // 32, 16), p + "down_proj_scales": (E, H, I // 32)})
        else:
            shapes.update({p + "gate_up_proj": (E, H, 2 * I), p + "down_proj": (E, I, H)})
        return shapes

    def check_experts(self, ckpt: Checkpoint, l: int) -> None:
        for name, shape in self.expected(ckpt, l).items():
            if tuple(ckpt.shape(name)) != shape:
                raise ConversionError(f"tensor {name} has shape {list(ckpt.shape(name))}, expected {list(shape)}")

    def expert_weights(self, ckpt: Checkpoint, l: int, e: int) -> dict[str, np.ndarray]:
        p = self.experts.format(l=l)
        if self._mxfp4(ckpt, l):
            # kept as blocks: an mxfp4 package copies them, any other format decodes them (quant.encode)
            gate_up = MxBlocks(ckpt.read_raw(p + "gate_up_proj_blocks", e), ckpt.read_raw(p + "gate_up_proj_scales", e))
            down = MxBlocks(ckpt.read_raw(p + "down_proj_blocks", e), ckpt.read_raw(p + "down_proj_scales", e))
        else:                                              # input-major: transpose to [out, in]
            gate_up = ckpt.read(p + "gate_up_proj", index=e).T
            down = ckpt.read(p + "down_proj", index=e).T
        bias = ckpt.read(p + "gate_up_proj_bias", index=e)
        return {"gate": gate_up[0::2], "up": gate_up[1::2], "down": down,      # rows of gate and up alternate
                "gate_bias": bias[0::2], "up_bias": bias[1::2], "down_bias": ckpt.read(p + "down_proj_bias", index=e)}
