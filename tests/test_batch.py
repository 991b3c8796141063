"""Batched decoding (engine/batch.py): sequences decoding together in one forward pass per token get
the tokens they get alone — greedy, seeded sampling, different prompts, lengths and stop
conditions, sequences joining while others run — on the demo model and a paged expert cache."""
from pathlib import Path

import pytest

from webmoe import Engine
from webmoe.engine.batch import BatchDecoder
from webmoe.engine.errors import PromptError
from webmoe.engine.generation import GenerationConfig

DEMO = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
REQUESTS = [("ROMEO. But soft", dict(max_new_tokens=12, temperature=0)),
            ([{"role": "user", "content": "Good morrow, how are you?"}], dict(max_new_tokens=20, temperature=0.8,
                                                                             top_p=0.9, seed=3)),
            ("JULIET.", dict(max_new_tokens=7, temperature=1.0, seed=11)),
            ("To be, or not to be", dict(max_new_tokens=16, temperature=0, stop=["\n"])),
            ("KING.", dict(max_new_tokens=1, temperature=0)),
            ("What light", dict(max_new_tokens=9, temperature=0.7, top_p=0.5, seed=5))]


def alone(engine, prompt, kw):
    g = engine.generate(prompt, **kw)
    return [(t.id, t.text) for t in g], g.finish_reason


@pytest.fixture(scope="module")
def single():
    return Engine.load(DEMO)


@pytest.mark.parametrize("budget", [None, 0.4])      # every expert resident; a cache that pages
def test_a_batch_gives_each_sequence_its_own_tokens(single, budget):
    want = [alone(single, p, kw) for p, kw in REQUESTS]
    kw = {} if budget is None else {"expert_cache_bytes": int(budget * single.experts.capacity * single.experts.slot_bytes)}
    batch = BatchDecoder(Engine.load(DEMO, max_batch=4, **kw))
    pending = list(enumerate(REQUESTS))
    seqs = {}
    steps = 0
    while pending or batch.active:
        while pending and not batch.full:        # join as slots free up, while the others run
            i, (prompt, k) = pending.pop(0)
            seqs[i] = batch.add(prompt, GenerationConfig(**k))
        batch.step()
        steps += 1
    got = [([(t.id, t.text) for t in seqs[i].tokens], seqs[i].finish_reason) for i in range(len(REQUESTS))]
    assert got == want
    assert steps < sum(len(w[0]) for w in want)        # passes were shared


def test_logprobs_in_a_batch_match_alone(single):
    kw = dict(max_new_tokens=5, temperature=0, logprobs=3)
    ref = list(single.generate("ROMEO.", **kw))
    batch = BatchDecoder(Engine.load(DEMO, max_batch=2))
    other = batch.add("JULIET.", GenerationConfig(max_new_tokens=5, temperature=0.5, seed=1))
    seq = batch.add("ROMEO.", GenerationConfig(**kw))
    while batch.active:
        batch.step()
    # the same tokens; the logits of a pass of several tokens agree with one token's to ~1e-6, not bit for
    # bit (the matrix kernels add a tile's products in another order), so a near tie could still differ
    assert [t.id for t in seq.tokens] == [t.id for t in ref]
    for t, r in zip(seq.tokens, ref):
        assert [i for i, _ in t.top_logprobs] == [i for i, _ in r.top_logprobs]
        assert [lp for _, lp in t.top_logprobs] == pytest.approx([lp for _, lp in r.top_logprobs], abs=1e-5)
        assert t.logprob == pytest.approx(r.logprob, abs=1e-5)
    assert all(t.logprob is None for t in other.tokens)


def test_slots_are_bounded():
    batch = BatchDecoder(Engine.load(DEMO, max_batch=2))
    a = batch.add("A", GenerationConfig(max_new_tokens=5))
    batch.add("B", GenerationConfig(max_new_tokens=5))
    with pytest.raises(PromptError, match="all 2 sequences"):
        batch.add("C", GenerationConfig(max_new_tokens=5))
    batch.cancel(a)
    assert not batch.full and len(batch.active) == 1
    with pytest.raises(PromptError, match="max_batch must lie in"):
        Engine.load(DEMO, max_batch=0)
