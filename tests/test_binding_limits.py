"""Real checkpoints need more than one storage binding per tensor and per expert slab. With the binding
limit lowered to 8 KiB (converter and engine alike), tiny models of every family exercise each cut a real
size needs: embeddings, LM heads and dense matrices split by rows, experts cut into pieces along their
intermediate dimension, and an expert slab of many banks, with logits still matching transformers."""
import zlib

import numpy as np
import pytest

from parity import assert_logits_close, build, reference_logits
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
    np.testing.assert_allclose(paged.logits(list(range(3, 40))), full, rtol=0, atol=1e-5 * float(np.abs(full).max()))
    assert_logits_close(full, reference_logits(ref, list(range(3, 40))), "f32")
