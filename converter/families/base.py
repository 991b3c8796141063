"""What every decoder-only family shares: reading its config, naming and checking its tensors, and
building its plan from the kernel steps of converter/plan.py. A family module sets class attributes
(tensor name templates, config keys) and overrides a block only where the architecture differs."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import ConversionError
from ..plan import GEOMETRY, Plan, rope_args
from ..rope import max_context, rope_parameters, rope_tables


@dataclass
class Dims:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope_theta: float
    rope_type: str
    rope_dim: int
    sliding_window: int          # 0 = full attention
    intermediate_size: int       # of the dense feed-forward layers (0 if there are none)


@dataclass
class MoE:
    num_experts: int
    top_k: int
    intermediate_size: int       # of one routed expert
    scoring: str                 # "softmax" | "sigmoid" | "sparsemixer" | "sigmoid_grouped"
    norm_topk_prob: bool
    routed_scaling_factor: float
    moe_layers: list[int]
    shared_expert_intermediate_size: int = 0   # 0 = no shared expert
    shared_expert_gate: bool = False           # sigmoid gate on the shared expert (Qwen2-MoE)
    jitter_eps: float = 0.0                    # sparsemixer's relative threshold (PhiMoE)
    n_group: int = 1                           # expert groups and how many are chosen (DeepSeek-V3)
    topk_group: int = 1


def need(config: dict, key, kind=int):
    """config[key] as kind; key may be a tuple of aliases (hub configs and transformers 5 differ)."""
    if isinstance(key, tuple):
        key = next((k for k in key if config.get(k) is not None), key[0])
    if key not in config or config[key] is None:
        raise ConversionError(f"config.json lacks {key!r}")
    try:
        value = kind(config[key])
    except (TypeError, ValueError):
        raise ConversionError(f"config.json: {key!r} must be {kind.__name__}, got {config[key]!r}") from None
    if kind is int and value <= 0:
        raise ConversionError(f"config.json: {key!r} must be positive, got {value}")
    return value


class DecoderFamily:
    name = ""
    model_types: tuple[str, ...] = ()
    real_models = ""             # the public checkpoints of this architecture, for docs and `info`

    # tensor name templates ({l} = layer, {e} = expert); a tuple lists accepted aliases
    embed = "model.embed_tokens.weight"
    final_norm = "model.norm.weight"
    lm_head = "lm_head.weight"
    attn_norm = "model.layers.{l}.input_layernorm.weight"
    ffn_norm = "model.layers.{l}.post_attention_layernorm.weight"
    attn = {"q": "model.layers.{l}.self_attn.q_proj.weight", "k": "model.layers.{l}.self_attn.k_proj.weight",
            "v": "model.layers.{l}.self_attn.v_proj.weight", "o": "model.layers.{l}.self_attn.o_proj.weight"}
    attn_bias = {k: v.replace(".weight", ".bias") for k, v in attn.items()}
    # the package's q, k and v rows of a layer as one matrix (and one bias), for one matmul (joined_tensors)
    qkv = "model.layers.{l}.self_attn.qkv_proj.weight"
    qkv_bias = "model.layers.{l}.self_attn.qkv_proj.bias"
    layer_norm = False            # LayerNorm with bias instead of RMSNorm for the block and final norms
    lm_head_bias = "lm_head.bias"
    # QK-norm: None; "head" = RMSNorm over each head's dims (Qwen3); "full" = over the whole projection (OLMoE)
    qk_norm: str | None = None
    q_norm = "model.layers.{l}.self_attn.q_norm.weight"
    k_norm = "model.layers.{l}.self_attn.k_norm.weight"
    dense_mlp = {"gate": "model.layers.{l}.mlp.gate_proj.weight", "up": "model.layers.{l}.mlp.up_proj.weight",
                 "down": "model.layers.{l}.mlp.down_proj.weight"}
    shared_mlp = {"gate": "model.layers.{l}.mlp.shared_expert.gate_proj.weight",
                  "up": "model.layers.{l}.mlp.shared_expert.up_proj.weight",
                  "down": "model.layers.{l}.mlp.shared_expert.down_proj.weight"}
    shared_gate = "model.layers.{l}.mlp.shared_expert_gate.weight"
    router: tuple[str, ...] = ("model.layers.{l}.mlp.gate.weight",)
    # routed experts, either one tensor per expert ...
    expert_gate: tuple[str, ...] = ("model.layers.{l}.mlp.experts.{e}.gate_proj.weight",)
    expert_up: tuple[str, ...] = ("model.layers.{l}.mlp.experts.{e}.up_proj.weight",)
    expert_down: tuple[str, ...] = ("model.layers.{l}.mlp.experts.{e}.down_proj.weight",)
    # ... or fused 3-D tensors: gate_up [E, 2I, H] (gate rows first), down [E, H, I]
    fused_gate_up = "model.layers.{l}.mlp.experts.gate_up_proj"
    fused_down = "model.layers.{l}.mlp.experts.down_proj"

    # config keys
    num_experts_key = ("num_experts", "num_local_experts")
    moe_intermediate_key = "moe_intermediate_size"
    norm_topk_default = True      # the config class's default, for configs that omit norm_topk_prob

    def __init__(self, config: dict):
        self.config = config
        self.dims = self.read_dims(config)
        self.moe = self.read_moe(config)

    # --- config -------------------------------------------------------------------------------------

    def read_dims(self, c: dict) -> Dims:
        heads = need(c, "num_attention_heads")
        hidden = need(c, "hidden_size")
        head_dim = c.get("head_dim") or hidden // heads
        kv = c.get("num_key_value_heads") or heads
        if heads % kv:
            raise ConversionError(f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
        rope = rope_parameters(c)
        partial = c.get("partial_rotary_factor") or rope.get("partial_rotary_factor") or 1.0
        return Dims(
            vocab_size=need(c, "vocab_size"), hidden_size=hidden, num_layers=need(c, "num_hidden_layers"),
            num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
            rms_norm_eps=float(c.get("rms_norm_eps") or 1e-6),
            max_position_embeddings=max_context(c),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)), rope_theta=float(rope["rope_theta"]),
            rope_type=rope["rope_type"], rope_dim=int(head_dim * partial),
            sliding_window=0 if c.get("use_sliding_window") is False else int(c.get("sliding_window") or 0),
            intermediate_size=int(c.get("intermediate_size") or 0))

    def attention_bias_parts(self, c: dict) -> set[str]:
        """Which of q, k, v, o projections carry a bias."""
        return {"q", "k", "v", "o"} if c.get("attention_bias") else set()

    def has_lm_head_bias(self) -> bool:
        return bool(self.config.get("lm_head_bias")) and not self.dims.tie_word_embeddings

    def norm_tensors(self, weight: str) -> dict[str, tuple[int, ...]]:
        H = self.dims.hidden_size
        return {weight: (H,), weight.replace(".weight", ".bias"): (H,)} if self.layer_norm else {weight: (H,)}

    def block_norm(self, plan: Plan, weight: str, label: str) -> None:
        """xn = norm(h) with the family's block norm (RMSNorm, or LayerNorm with bias)."""
        d = self.dims
        bias = weight.replace(".weight", ".bias") if self.layer_norm else None
        plan.rmsnorm("h", weight, "xn", "T", d.hidden_size, d.rms_norm_eps, bias=bias, label=label)

    def read_moe(self, c: dict) -> MoE:
        E, k = need(c, self.num_experts_key), need(c, "num_experts_per_tok")
        max_k, max_e = GEOMETRY["router"]["MAX_K"], GEOMETRY["moe_gather"]["MAX_E"]
        if k > E or k > max_k:
            raise ConversionError(f"num_experts_per_tok ({k}) must be at most num_experts ({E}) and {max_k}")
        if E > max_e:
            raise ConversionError(f"{E} experts per layer; webmoe supports up to {max_e}")
        norm = c.get("norm_topk_prob")
        return MoE(num_experts=E, top_k=k, intermediate_size=need(c, self.moe_intermediate_key),
                   scoring="softmax", norm_topk_prob=self.norm_topk_default if norm is None else bool(norm),
                   routed_scaling_factor=float(c.get("routed_scaling_factor") or 1.0),
                   moe_layers=self.moe_layer_indices(c))

    def moe_layer_indices(self, c: dict) -> list[int]:
        """Every layer, unless decoder_sparse_step / mlp_only_layers make some dense (Qwen-MoE)."""
        step = c.get("decoder_sparse_step") or 1
        dense = set(c.get("mlp_only_layers") or [])
        return [l for l in range(self.dims.num_layers) if l not in dense and (l + 1) % step == 0]

    def describe(self) -> dict:
        return {"dims": asdict(self.dims), "moe": asdict(self.moe)}

    # --- tensors --------------------------------------------------------------------------------------

    def resolve(self, ckpt: Checkpoint | None, names, **fmt) -> str:
        """The first alias present in the checkpoint; without a checkpoint (a plan built from a config
        alone), the first alias."""
        names = (names,) if isinstance(names, str) else names
        if ckpt is None:
            return names[0].format(**fmt)
        for n in names:
            if ckpt.has(n.format(**fmt)):
                return n.format(**fmt)
        raise ConversionError(f"missing tensor {names[0].format(**fmt)} in the checkpoint")

    def dense_tensors(self, ckpt: Checkpoint | None) -> dict[str, tuple[int, ...]]:
        """Every non-expert tensor the plan reads: checkpoint name -> expected shape."""
        d, H = self.dims, self.dims.hidden_size
        out = {self.embed: (d.vocab_size, H), **self.norm_tensors(self.final_norm)}
        if not d.tie_word_embeddings:
            out[self.lm_head] = (d.vocab_size, H)
        if self.has_lm_head_bias():
            out[self.lm_head_bias] = (d.vocab_size,)
        for l in range(d.num_layers):
            out.update(self.layer_tensors(ckpt, l))
        return out

    def layer_tensors(self, ckpt: Checkpoint | None, l: int) -> dict[str, tuple[int, ...]]:
        d, H = self.dims, self.dims.hidden_size
        out = {**self.norm_tensors(self.attn_norm.format(l=l)), **self.norm_tensors(self.ffn_norm.format(l=l)),
               **self.attention_tensors(l)}
        if self.attention_sinks(l):
            out[self.attention_sinks(l)] = (d.num_heads,)
        m = self.moe
        if l in m.moe_layers:
            out[self.resolve(ckpt, self.router, l=l)] = (m.num_experts, H)
            for bias in (self.router_bias(l), self.router_choice_bias(l)):
                if bias:
                    out[bias] = (m.num_experts,)
            if m.shared_expert_intermediate_size:
                out.update(self.mlp_tensors(self.shared_mlp, l, m.shared_expert_intermediate_size))
                if m.shared_expert_gate:
                    out[self.shared_gate.format(l=l)] = (1, H)
        else:
            out.update(self.mlp_tensors(self.dense_mlp, l, d.intermediate_size))
        return out

    def attention_tensors(self, l: int) -> dict[str, tuple[int, ...]]:
        d, H = self.dims, self.dims.hidden_size
        qd, kvd = d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
        out = {self.attn["q"].format(l=l): (qd, H), self.attn["k"].format(l=l): (kvd, H),
               self.attn["v"].format(l=l): (kvd, H), self.attn["o"].format(l=l): (H, qd)}
        bias_size = {"q": qd, "k": kvd, "v": kvd, "o": H}
        biased = self.attention_bias_parts(self.config)
        for part in (p for p in "qkvo" if p in biased):      # in this order: a set's order changes run to run
            out[self.attn_bias[part].format(l=l)] = (bias_size[part],)
        if self.qk_norm == "head":
            out.update({self.q_norm.format(l=l): (d.head_dim,), self.k_norm.format(l=l): (d.head_dim,)})
        elif self.qk_norm == "full":
            out.update({self.q_norm.format(l=l): (qd,), self.k_norm.format(l=l): (kvd,)})
        return out

    def joined_tensors(self) -> dict[str, list[str]]:
        """Package tensors stacked by rows from checkpoint tensors, in order: each layer's q, k and v
        projections as one matrix (one matmul instead of three), and their biases where they have them."""
        biased = self.attention_bias_parts(self.config) & {"q", "k", "v"}
        if biased not in (set(), {"q", "k", "v"}):
            raise ConversionError(f"{self.name}: only some of the q, k and v projections carry a bias")
        out = {}
        for l in range(self.dims.num_layers):
            out[self.qkv.format(l=l)] = [self.attn[p].format(l=l) for p in "qkv"]
            if biased:
                out[self.qkv_bias.format(l=l)] = [self.attn_bias[p].format(l=l) for p in "qkv"]
        return out

    def transforms(self, name: str) -> bool:
        """Whether transform_dense changes this tensor (the converter streams the others in row blocks)."""
        return False

    def transform_dense(self, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
        """The package tensors made from one checkpoint tensor (a family may split or reorder one)."""
        return {name: array}

    def mlp_tensors(self, names: dict, l: int, I: int) -> dict[str, tuple[int, ...]]:
        if I <= 0:
            raise ConversionError(f"layer {l} is a dense feed-forward layer but config.json gives no intermediate_size")
        H = self.dims.hidden_size
        return {names["gate"].format(l=l): (I, H), names["up"].format(l=l): (I, H), names["down"].format(l=l): (H, I)}

    # --- per-family hooks (defaults: no sinks, one window for all layers, no router bias, SwiGLU) ---------

    def layer_window(self, l: int) -> int:
        return self.dims.sliding_window

    def attention_sinks(self, l: int) -> str | None:
        return None

    def router_bias(self, l: int) -> str | None:
        return None

    def router_choice_bias(self, l: int) -> str | None:
        """A bias added to expert scores for choosing only (DeepSeek-V3's e_score_correction_bias)."""
        return None

    def expert_activation(self) -> dict | None:
        return None

    def f32_tensors(self, ckpt: Checkpoint | None) -> set[str]:
        """Matrices kept in f32 whatever --dtype says: routers and shared-expert gates."""
        out = {self.resolve(ckpt, self.router, l=l) for l in self.moe.moe_layers}
        if self.moe.shared_expert_gate:
            out |= {self.shared_gate.format(l=l) for l in self.moe.moe_layers}
        return out

    def weight_parts(self, ckpt: Checkpoint | None) -> dict[str, str]:
        """Checkpoint tensor -> its part in weight_dtypes.PARTS (a tensor not named here is "ffn")."""
        out = {self.embed: "embed"}
        if not self.dims.tie_word_embeddings:
            out[self.lm_head] = "head"
        for l in range(self.dims.num_layers):
            out.update(dict.fromkeys(self.attention_tensors(l), "attention"))
        return out

    def native_expert_format(self, ckpt: Checkpoint) -> str | None:
        """A format the checkpoint's experts are already stored in and the package keeps (GPT-OSS: mxfp4)."""
        return None

    def generated_tensors(self) -> dict[str, np.ndarray]:
        """Tensors the converter computes rather than copies (RoPE frequencies)."""
        return {"rope.inv_freq": rope_tables(self.config, self.dims.rope_dim)[0]}

    def expert_shapes(self) -> dict[str, tuple[int, int]]:
        I, H = self.moe.intermediate_size, self.dims.hidden_size
        return {"gate": (I, H), "up": (I, H), "down": (H, I)}

    def check_experts(self, ckpt: Checkpoint, l: int) -> None:
        """Checks names and shapes from the headers only, before anything is written."""
        E, (I, H) = self.moe.num_experts, self.expert_shapes()["gate"]
        fused = self.fused_gate_up.format(l=l)
        if ckpt.has(fused):
            for name, shape in ((fused, (E, 2 * I, H)), (self.fused_down.format(l=l), (E, H, I))):
                if ckpt.shape(name) != shape:
                    raise ConversionError(f"tensor {name} has shape {list(ckpt.shape(name))}, expected {list(shape)}")
            return
        for e in range(E):
            for role, templates in (("gate", self.expert_gate), ("up", self.expert_up), ("down", self.expert_down)):
                name = self.resolve(ckpt, templates, l=l, e=e)
                if ckpt.shape(name) != self.expert_shapes()[role]:
                    raise ConversionError(f"tensor {name} has shape {list(ckpt.shape(name))}, "
                                          f"expected {list(self.expert_shapes()[role])}")

    def expert_weights(self, ckpt: Checkpoint, l: int, e: int) -> dict[str, np.ndarray]:
        """Expert e of layer l as {gate: [I, H], up: [I, H], down: [H, I]}, reading only that expert."""
        shapes = self.expert_shapes()
        I = shapes["gate"][0]
        fused = self.fused_gate_up.format(l=l)
        if ckpt.has(fused):
            gate_up = ckpt.read(fused, (2 * I, shapes["gate"][1]), index=e)
            return {"gate": gate_up[:I], "up": gate_up[I:],
                    "down": ckpt.read(self.fused_down.format(l=l), shapes["down"], index=e)}
        return {role: ckpt.read(self.resolve(ckpt, t, l=l, e=e), shapes[role])
                for role, t in (("gate", self.expert_gate), ("up", self.expert_up), ("down", self.expert_down))}

    # --- plan -----------------------------------------------------------------------------------------

    def build_plan(self, plan: Plan, ckpt: Checkpoint | None, expert_layout: dict, expert_dtype: str) -> None:
        d = self.dims
        H, V = d.hidden_size, d.vocab_size
        plan.buffer("ids", ["T"], "u32")
        plan.buffer("positions", ["T"], "u32")
        plan.buffer("cache_rows", ["T"], "u32")
        plan.buffer("h", ["T", H])          # residual stream
        plan.buffer("xn", ["T", H])         # normalised input of a block
        plan.buffer("logits", ["T", V])
        plan.buffer("token", [1], "u32")    # the sampled next token
        plan.inputs_outputs("ids", "positions", "cache_rows", "logits")
        plan.embed("ids", self.embed, "h", H)
        for l in range(d.num_layers):
            self.attention_block(plan, l)
            if l in self.moe.moe_layers:
                self.moe_block(plan, ckpt, l, expert_layout, expert_dtype)
            else:
                self.dense_ffn_block(plan, l)
        self.block_norm(plan, self.final_norm, "final_norm")
        head = self.embed if d.tie_word_embeddings else self.lm_head
        plan.matmul("xn", head, "logits", H, V, T="n_logits", x_row0="logit_row0",
                    bias=self.lm_head_bias if self.has_lm_head_bias() else None, label="lm_head")
        plan.sampler("logits", "token", V)

    def attention_block(self, plan: Plan, l: int) -> None:
        d = self.dims
        H, D, nh, nkv = d.hidden_size, d.head_dim, d.num_heads, d.num_kv_heads
        q, kc, vc = plan.buffer("q", ["T", nh * D]), plan.buffer(f"k_cache.{l}", ["S", nkv * D]), \
            plan.buffer(f"v_cache.{l}", ["S", nkv * D])
        k, v = plan.buffer("k_new", ["T", nkv * D]), plan.buffer("v_new", ["T", nkv * D])    # this pass's tokens
        attn = plan.buffer("attn", ["T", nh * D])
        name = {k: v.format(l=l) for k, v in self.attn.items()}
        parts = self.attention_bias_parts(self.config)
        bias = {k: (v.format(l=l) if k in parts else None) for k, v in self.attn_bias.items()}
        self.block_norm(plan, self.attn_norm.format(l=l), f"L{l}.attn_norm")
        plan.matmul("xn", self.qkv.format(l=l), q, H, (nh + 2 * nkv) * D,        # q, k and v: one joined weight
                    bias=self.qkv_bias.format(l=l) if "q" in parts else None,
                    split_y=[(q, nh * D), (k, nkv * D), (v, nkv * D)], label=f"L{l}.qkv_proj")
        if self.qk_norm == "head":     # rows are heads: q [T * nh, D], k [T * nkv, D]
            plan.rmsnorm(None, self.q_norm.format(l=l), q, ["T", nh, 1], D, d.rms_norm_eps, label=f"L{l}.q_norm")
            plan.rmsnorm(None, self.k_norm.format(l=l), k, ["T", nkv, 1], D, d.rms_norm_eps, label=f"L{l}.k_norm")
        elif self.qk_norm == "full":   # rows are tokens
            plan.rmsnorm(None, self.q_norm.format(l=l), q, "T", nh * D, d.rms_norm_eps, label=f"L{l}.q_norm")
            plan.rmsnorm(None, self.k_norm.format(l=l), k, "T", nkv * D, d.rms_norm_eps, label=f"L{l}.k_norm")
        rope = rope_args("rope.inv_freq", d.rope_dim, rope_tables(self.config, d.rope_dim)[1])
        plan.kv_store(k, v, kc, vc, nkv, D, D, rope, label=f"L{l}.kv_store")      # keys rotated on the way
        plan.attention(q, kc, vc, attn, nh, nkv, D, D, D ** -0.5, window=self.layer_window(l),
                       sinks=self.attention_sinks(l), rope=rope, label=f"L{l}.attention")   # queries too
        plan.matmul(attn, name["o"], "h", nh * D, H, accumulate=True, bias=bias["o"], label=f"L{l}.o_proj")

    def moe_block(self, plan: Plan, ckpt: Checkpoint | None, l: int, layout: dict, expert_dtype: str) -> None:
        d, m = self.dims, self.moe
        H, E, K, I = d.hidden_size, m.num_experts, m.top_k, m.intermediate_size
        plan.buffer("router_logits", ["T", E])
        plan.buffer("topk_ids", ["T", K], "u32")
        plan.buffer("topk_w", ["T", K])
        plan.buffer("expert_offsets", [E + 1], "u32")
        plan.buffer("pair_order", ["T", K], "u32")
        plan.buffer("active_experts", [2 * E + 1], "u32")
        plan.buffer("act", ["T", K, I])
        plan.buffer("expert_out", ["T", K, H])
        self.block_norm(plan, self.ffn_norm.format(l=l), f"L{l}.ffn_norm")
        logits_step = plan.matmul("xn", self.resolve(ckpt, self.router, l=l), "router_logits", H, E,
                                  bias=self.router_bias(l), label=f"L{l}.router_logits")
        # the router also sorts the (token, k) pairs by expert for the expert kernels (one step, not two)
        router_step = plan.router("router_logits", "topk_ids", "topk_w", E, K, m.scoring, m.norm_topk_prob,
                                  m.routed_scaling_factor, m.jitter_eps, self.router_choice_bias(l), m.n_group,
                                  m.topk_group, gather=("expert_offsets", "pair_order", "active_experts"),
                                  label=f"L{l}.router")
        experts = plan.moe_experts("xn", "act", "expert_out", "expert_offsets", "pair_order", "active_experts", l, E, K,
                                   H, I, layout, expert_dtype, self.expert_activation(), label=f"L{l}.experts")
        plan.moe_layer(l, "xn", logits_step, router_step, experts)
        if m.shared_expert_intermediate_size:
            if m.shared_expert_gate:     # h += sigmoid(xn . w_gate) * shared(xn)
                plan.buffer("shared_out", ["T", H])
                plan.buffer("shared_gate", ["T", 1])
                self.mlp(plan, self.shared_mlp, l, m.shared_expert_intermediate_size, "shared_out", False,
                         f"L{l}.shared_expert")
                plan.matmul("xn", self.shared_gate.format(l=l), "shared_gate", H, 1, label=f"L{l}.shared_gate")
                plan.gated_add("shared_gate", "shared_out", "h", H, label=f"L{l}.shared_gated_add")
            else:
                self.mlp(plan, self.shared_mlp, l, m.shared_expert_intermediate_size, "h", True, f"L{l}.shared_expert")
        plan.scatter_add("expert_out", "topk_w", "h", K, H, label=f"L{l}.scatter_add")

    def dense_ffn_block(self, plan: Plan, l: int) -> None:
        self.block_norm(plan, self.ffn_norm.format(l=l), f"L{l}.ffn_norm")
        self.mlp(plan, self.dense_mlp, l, self.dims.intermediate_size, "h", True, f"L{l}.mlp")

    def mlp(self, plan: Plan, names: dict, l: int, I: int, out: str, accumulate: bool, label: str) -> None:
        """SwiGLU feed-forward on xn: out (+)= (silu(xn W_gate) * (xn W_up)) W_down."""
        H = self.dims.hidden_size
        g, u, a = (plan.buffer(f"mlp_{part}.{I}", ["T", I]) for part in ("gate", "up", "act"))
        plan.matmul("xn", names["gate"].format(l=l), g, H, I, label=f"{label}.gate_proj")
        plan.matmul("xn", names["up"].format(l=l), u, H, I, label=f"{label}.up_proj")
        plan.silu_mul(g, u, a, I, label=f"{label}.silu_mul")
        plan.matmul(a, names["down"].format(l=l), out, I, H, accumulate=accumulate, label=f"{label}.down_proj")
