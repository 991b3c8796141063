"""A package's weights as numbers: every tensor and expert decoded by numpy (converter/quant.py's decode,
checked against blocks built by hand from docs/format.md's layout in test_quant.py) and put back into the
checkpoint they came from, so transformers can run the weights the package holds (tests of the block
formats' kernels at f32's bound: test_quantised_kernels.py, test_binding_limits.py)."""
import json
import re
import shutil

import numpy as np
from safetensors.numpy import load_file, save_file

from webmoe.converter.quant import decode
from webmoe.engine.package import Package

ROLES = ("gate", "up", "down")


def package_weights(pkg) -> tuple[dict[str, np.ndarray], dict[tuple[int, int], dict[str, np.ndarray]]]:
    """Every tensor of the package decoded to float32 by name (a tensor cut into row parts, NAME.partK,
    joined again), and every expert's parts by (layer, expert) (an expert cut into pieces joined again: the
    rows of gate and up, the columns of down)."""
    package = Package(pkg)                      # reads each shard checked against its sha256
    m = package.manifest
    cut: dict[str, list] = {}
    for name, t in m["tensors"].items():
        value = decode(package.tensor_bytes(name), t["dtype"], int(np.prod(t["shape"]))).reshape(t["shape"])
        part = re.fullmatch(r"(.*)\.part(\d+)", name)
        base, k = (part[1], int(part[2])) if part else (name, 0)
        cut.setdefault(base, []).append((k, value.astype(np.float32)))
    dense = {name: np.concatenate([v for _, v in sorted(parts, key=lambda kv: kv[0])]) for name, parts in cut.items()}
    dense = unjoined(dense, m["hf_config"])
    layout, inter = m["moe"]["expert_layout"], m["moe"]["intermediate_size"]
    experts = {}
    for key in m["experts"]:
        layer, expert = map(int, key.split("_"))
        data = package.expert_bytes(layer, expert)
        pieces = {role: [] for role in ROLES}
        for p in range(layout["pieces"]):
            for role in ROLES:
                r = layout[role]
                at = p * layout["slot_bytes"] + r["offset"]
                pieces[role].append(decode(data[at:at + r["size"]], r["dtype"], int(np.prod(r["shape"]))).reshape(r["shape"]))
        experts[(layer, expert)] = {"gate": np.concatenate(pieces["gate"])[:inter].astype(np.float32),
                                    "up": np.concatenate(pieces["up"])[:inter].astype(np.float32),
                                    "down": np.concatenate(pieces["down"], axis=1)[:, :inter].astype(np.float32)}
    return dense, experts


def unjoined(dense: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """A layer's joined q, k and v rows (self_attn.qkv_proj, docs/format.md) as the checkpoint's three
    tensors again: the query heads' rows, then the key heads', then the value heads'."""
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    out = {}
    for name, value in dense.items():
        joined = re.fullmatch(r"(.*self_attn\.)qkv_proj\.(weight|bias)", name)
        if not joined:
            out[name] = value
            continue
        q, k = heads * head_dim, kv_heads * head_dim
        assert value.shape[0] == q + 2 * k, name
        for proj, rows in (("q_proj", value[:q]), ("k_proj", value[q:q + k]), ("v_proj", value[q + k:])):
            out[f"{joined[1]}{proj}.{joined[2]}"] = rows
    return out


def dequantised_checkpoint(ckpt, out, dense, experts):
    """The checkpoint again with every tensor replaced by the package's decoded one: dense tensors by name,
    an expert's tensor (layers.L...experts.E... in the checkpoint's own naming) by the part of expert (L, E)
    of its shape nearest to it (gate and up share a shape; quantisation moves a weight far less than the
    distance between two random tensors)."""
    shutil.copytree(ckpt, out)
    weights = load_file(ckpt / "model.safetensors")
    config = json.loads((ckpt / "config.json").read_text())
    for name, value in weights.items():
        if name in dense:
            weights[name] = dense[name]
        elif config["model_type"] == "deepseek_v3" and "experts." not in name:
            weights[name] = deepseek_attention_weight(name, dense, config)
        else:
            where = re.search(r"layers\.(\d+)\..*experts\.(\d+)\.", name)
            assert where, f"{name}: neither a package tensor nor an expert's"
            parts = [p for p in experts[(int(where[1]), int(where[2]))].values() if p.shape == value.shape]
            weights[name] = min(parts, key=lambda p: float(np.abs(p - value).max()))
        assert weights[name].shape == value.shape, name
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def deepseek_attention_weight(name, dense, config) -> np.ndarray:
    """A DeepSeek-V3 attention weight from the parts the package splits it into (docs/format.md): the latent
    and rotary rows of kv_a_proj_with_mqa; kv_b_proj's per-head key (stored transposed, for absorption) and
    value rows; q_b_proj's (or q_proj's) per-head rows without and with rotary position."""
    nh, dn, dr = config["num_attention_heads"], config["qk_nope_head_dim"], config["qk_rope_head_dim"]
    dv, r = config["v_head_dim"], config["kv_lora_rank"]
    base = name[:-len(".weight")]
    if "kv_a_proj_with_mqa" in name:
        a = base.replace("kv_a_proj_with_mqa", "kv_a_proj")
        return np.concatenate([dense[a + ".latent.weight"], dense[a + ".rope.weight"]])
    if name.endswith("kv_b_proj.weight"):
        k = dense[base + ".k_absorb.weight"].reshape(nh, r, dn).transpose(0, 2, 1)
        v = dense[base + ".v.weight"].reshape(nh, dv, r)
        return np.concatenate([k, v], axis=1).reshape(nh * (dn + dv), r)
    if name.endswith(("q_b_proj.weight", "q_proj.weight")):
        nope, rope = dense[base + ".nope.weight"], dense[base + ".rope.weight"]
        return np.concatenate([nope.reshape(nh, dn, -1), rope.reshape(nh, dr, -1)], axis=1).reshape(nh * (dn + dr), -1)
    raise AssertionError(f"{name}: not a DeepSeek-V3 weight the package splits")
