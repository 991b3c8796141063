"""Batched decoding (engine/batch.py): sequences decoding together in one forward pass per token get
the tokens they get alone — greedy, seeded sampling, different prompts, lengths and stop
conditions, sequences joining while others run — on the demo model and a paged expert cache."""
from pathlib import Path

import pytest

from webmoe import Engine
from webmoe.engine.batch import BatchDecoder
from webmoe.engine.errors import OptionError, PromptError
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
    with pytest.raises(OptionError, match="max_batch must be an integer of at least 1, not 0"):
        Engine.load(DEMO, max_batch=0)
    with pytest.raises(OptionError, match=r"max_batch must lie in \[1, 64\]"):
        Engine.load(DEMO, max_batch=65)


class Faults:
    """Injects failures into one sequence's path through an engine: its grammar failing on its n-th token
    (Constraint.push), or every forward pass that holds its row raising while it runs (a device fault)."""

    def __init__(self, engine, monkeypatch):
        from webmoe.engine import constraint
        self.engine, self.bad = engine, None          # bad: the Sequence whose rows fail
        decode = engine.decode

        def faulty_decode(rows, sampling, return_logits=False):
            if self.bad is not None and not self.bad.done and self.bad.slot in {slot for _, _, slot in rows}:
                raise RuntimeError("injected device fault")
            return decode(rows, sampling, return_logits)
        monkeypatch.setattr(engine, "decode", faulty_decode)
        self.pushes = {}
        push = constraint.Constraint.push

        def counted_push(c, token):
            self.pushes[id(c)] = self.pushes.get(id(c), 0) + 1
            if self.pushes[id(c)] >= getattr(c, "fail_at", 10**9):
                raise PromptError("injected grammar failure")
            return push(c, token)
        monkeypatch.setattr(constraint.Constraint, "push", counted_push)


def run_batch(batch, work):
    """Adds every (prompt, config) while the others run, one per pass; returns the Sequences or exceptions."""
    out, pending = [], list(work)
    while pending or batch.active:
        if pending and not batch.full:
            prompt, config, hook = pending.pop(0)
            try:
                seq = batch.add(prompt, config)
            except Exception as e:      # noqa: BLE001 - recorded for the test to check
                out.append(e)
                continue
            hook(seq)
            out.append(seq)
        batch.step()
    return out


@pytest.mark.parametrize("fault", ["grammar at its first token", "grammar later", "its row of a pass"])
def test_a_failing_sequence_leaves_the_others_alone(single, monkeypatch, fault):
    """One sequence fails — its grammar on the token prefill samples (the server's poisoned-batch bug), its
    grammar mid-way, or the forward passes that hold its row — while three others decode: it ends with an
    error of its own and its slot is free, the others get exactly the tokens they get alone."""
    from webmoe.engine import constraint
    others = [(p, kw) for p, kw in REQUESTS if kw["max_new_tokens"] > 1][:3]
    want = [alone(single, p, kw) for p, kw in others]
    engine = Engine.load(DEMO, max_batch=4)
    faults = Faults(engine, monkeypatch)
    grammar = constraint.json_grammar(None)
    fail_at = {"grammar at its first token": 1, "grammar later": 3}.get(fault)
    original = constraint.Constraint.__init__

    def marked(c, *a):
        original(c, *a)
        c.fail_at = fail_at or 10**9
    monkeypatch.setattr(constraint.Constraint, "__init__", marked)

    def poison(seq):
        if fault == "its row of a pass":
            faults.bad = seq
    work = [(p, GenerationConfig(**kw), lambda s: None) for p, kw in others[:2]]
    work.append(("Answer in JSON.", GenerationConfig(max_new_tokens=12, grammar=grammar), poison))
    work.append((others[2][0], GenerationConfig(**others[2][1]), lambda s: None))
    batch = BatchDecoder(engine)
    got = run_batch(batch, work)
    bad = got[2]
    if fault == "grammar at its first token":
        assert isinstance(bad, PromptError) and "injected grammar failure" in str(bad)
    else:
        assert bad.finish_reason == "error" and bad.error_status == (400 if "grammar" in fault else 500)
        assert bad.error == ("injected grammar failure" if "grammar" in fault else "the engine failed on this sequence")
    good = [got[0], got[1], got[3]]
    assert [([(t.id, t.text) for t in s.tokens], s.finish_reason) for s in good] == want
    assert not batch.active and len(batch.free) == engine.max_batch       # every slot came back
