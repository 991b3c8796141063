"""Real checkpoints need more than one storage binding per tensor and per expert slab. With the binding
limit lowered to 8 KiB (converter and engine alike), tiny models of every family exercise each cut a real
size needs: embeddings, LM heads and dense matrices split by rows, experts cut into pieces along their
intermediate dimension, and an expert slab of many banks, with logits still matching transformers."""
import zlib

import numpy as np
import pytest
import torch

from package_weights import dequantised_checkpoint, package_weights
from parity import assert_logits_close, assert_paged_equals_resident, build, reference_logits
from test_families import CASES
from test_mixtral import CONFIGS as MIXTRAL
from transformers import MixtralForCausalLM

LIMIT = 8 << 10
ONE_PER_FAMILY = {"mixtral": (MixtralForCausalLM, MIXTRAL["gqa-top2"]), "qwen3_moe": CASES["qwen3_moe"],
                  "qwen2_moe": CASES["qwen2_moe"], "olmoe": CASES["olmoe"], "phimoe": CASES["phimoe"],
                  "deepseek_v3": CASES["deepseek_v3"], "gpt_oss": CASES["gpt_oss"]}


@pytest.mark.parametrize("family", ONE_PER_FAMILY)
def test_family_at_a_lowered_binding_limit(tmp_path, family):
    model_cls, config = ONE_PER_FAMILY[family]
    ref, engine = build(model_cls, config, tmp_path, "f32", max_binding=LIMIT, chunk_tokens=4, max_seq_len=56)
    m = engine.package.manifest
    assert all(t["size"] <= LIMIT for t in m["tensors"].values())
    assert any(".part" in name for name in m["tensors"])                       # the embedding at least
    assert m["plan"]["resources"]["experts"]["slot_bytes"] <= LIMIT
    cache = engine.experts
    assert len(cache.banks) > 1 and all(b.size <= LIMIT for b in cache.banks)
    assert not cache.paging
    ids = np.random.default_rng(zlib.crc32(family.encode())).integers(3, 400, 50).tolist()
    assert_logits_close(engine.logits(ids), reference_logits(ref, ids), "f32")


def test_pieces_and_paging_at_a_lowered_limit(tmp_path):
    """Experts of several pieces, paged through a cache of 3 experts spread over banks: the same logits."""
    model_cls, config = CASES["qwen3_moe"]
    ref, engine = build(model_cls, config, tmp_path, "f32", max_binding=LIMIT, chunk_tokens=4, max_seq_len=56)
    assert engine.experts.pieces > 1
    full = engine.logits(list(range(3, 40)))
    from webmoe import Engine
    paged = Engine.load(engine.package.dir, max_binding=LIMIT, chunk_tokens=4, max_seq_len=56,
                        expert_cache_bytes=3 * engine.experts.expert_bytes)
    assert paged.experts.paging and paged.experts.capacity == 3
    assert_paged_equals_resident(paged.logits(list(range(3, 40))), full)
    assert_logits_close(full, reference_logits(ref, list(range(3, 40))), "f32")


@pytest.mark.parametrize("preset,parts", [("q4", {"embed": "q4", "head": "q4"}), ("q8", {"experts": "mxfp4"})])
def test_block_formats_cut_and_paged_at_a_lowered_limit(tmp_path, preset, parts):
    """Block formats through every cut: row parts each encoded on their own, experts in pieces (MXFP4's
    on whole 32-value blocks), a slab of many banks, and paging through 3 slots giving the resident
    logits exactly; the logits are transformers' on the weights the package holds, to f32's bound."""
    from webmoe import Engine
    from webmoe.converter.convert import convert
    from tiny_models import save_checkpoint
    from test_families import qwen3
    model_cls, config = qwen3(mlp_only_layers=[1], moe_intermediate_size=96)   # 3 MXFP4 pieces of 32 rows
    limit = 4 << 10          # 4-bit experts are small: a lower limit still cuts them
    ckpt = save_checkpoint(model_cls, config, tmp_path / "ckpt")
    opts = dict(max_binding=limit, chunk_tokens=2, max_seq_len=24)
    pkg = convert(ckpt, tmp_path / preset, dtype=preset, part_dtypes=parts, progress=False, max_binding=limit)
    engine = Engine.load(pkg, **opts)
    m = engine.package.manifest
    assert all(t["size"] <= limit for t in m["tensors"].values()) and any(".part" in n for n in m["tensors"])
    assert engine.experts.pieces > 1 and len(engine.experts.banks) > 1
    ids = list(range(3, 23))
    full = engine.logits(ids)
    paged = Engine.load(pkg, expert_cache_bytes=3 * engine.experts.expert_bytes, **opts)
    assert paged.experts.paging
    assert_paged_equals_resident(paged.logits(ids), full)
    # the cut and paged package computes what transformers computes on the weights it holds
    held = dequantised_checkpoint(ckpt, tmp_path / "held", *package_weights(pkg))
    ref = model_cls.from_pretrained(held, dtype=torch.float32, experts_implementation="eager").eval()
    assert_logits_close(full, reference_logits(ref, ids), "f32", bound=f"logits {preset} vs transformers on the package's weights")
