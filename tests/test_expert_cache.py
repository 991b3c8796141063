"""The GPU expert cache: numerics that do not depend on the budget, LRU eviction that spares the
running batch and pinned experts, and statistics that add up."""
import resource
from pathlib import Path

import numpy as np
import pytest
from transformers import MixtralForCausalLM

from parity import assert_paged_equals_resident
from test_families import CASES as FAMILY_CASES
from test_mixtral import CONFIGS
from webmoe.converter.convert import convert
from webmoe import Engine
from webmoe.engine.expert_cache import ExpertCacheError
from tiny_models import save_checkpoint


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    return {
        # 3 layers x 7 experts, top-3
        "mixtral": convert(save_checkpoint(MixtralForCausalLM, CONFIGS["odd-sizes-top3"], root / "m"), root / "mixtral",
                           dtype="f32", progress=False),
        # shared expert beside the routed ones, a dense layer
        "qwen2_moe": convert(save_checkpoint(*FAMILY_CASES["qwen2_moe-dense-layer-normalised"], root / "q"),
                             root / "qwen2_moe", dtype="f32", progress=False),
    }


def budgets(engine):
    """Every expert, half, a quarter, and the minimum of one slot, in bytes."""
    c = engine.experts
    total = len(c.moe_layers) * c.num_experts
    return [total * c.slot_bytes, total // 2 * c.slot_bytes, max(1, total // 4) * c.slot_bytes, c.slot_bytes]


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_numerics_do_not_depend_on_the_budget(packages, name):
    full = Engine.load(packages[name])
    assert not full.experts.paging
    ids = np.random.default_rng(0).integers(3, 400, 70).tolist()    # prefill over two chunks
    ref_logits = full.logits(ids)
    ref_tokens = [t.id for t in full.generate(ids[:9], max_new_tokens=16, temperature=0)]
    for budget in budgets(full)[1:]:
        for prefetch in (False, True):
            engine = Engine.load(packages[name], expert_cache_bytes=budget, prefetch=prefetch)
            assert engine.experts.paging and engine.experts.n_slots == budget // engine.experts.slot_bytes
            assert_paged_equals_resident(engine.logits(ids), ref_logits)
            assert [t.id for t in engine.generate(ids[:9], max_new_tokens=16, temperature=0)] == ref_tokens
            stats = engine.expert_stats()
            for s in [*stats["layers"].values(), stats["total"]]:
                assert s["hits"] + s["misses"] == s["lookups"]
                assert s["bytes_uploaded"] == (s["misses"] + s["prefetched"]) * engine.experts.slot_bytes
                assert s["predicted_used"] <= min(s["predicted"], s["needed_after_prediction"])
            total = stats["total"]
            assert total["misses"] > 0 and stats["resident"] <= engine.experts.n_slots
            # the predictor names experts for every MoE layer but the first (qwen2_moe here has just one)
            assert (total["predicted"] > 0) == (prefetch and len(engine.segments) > 1)
            if total["predicted"]:
                assert 0 <= total["precision"] <= 1 and 0 <= total["recall"] <= 1


def test_eviction_spares_the_running_batch_and_pinned_experts(packages):
    """Checked from outside the cache's own bookkeeping (not its in_use set): whenever a batch of a layer's
    experts is handed to the kernels, every expert of it is resident in slots of its own that the slot
    table names, the batches of a layer cover exactly the experts its router chose, and pinned experts
    never leave."""
    slot = Engine.load(packages["mixtral"]).experts.slot_bytes
    pinned = [(0, 1), (2, 6)]
    engine = Engine.load(packages["mixtral"], expert_cache_bytes=5 * slot, pinned_experts=pinned)
    cache = engine.experts
    problems = []
    batches = cache.batches

    def watched(layer, experts):
        covered = []
        for batch in batches(layer, experts):
            slots = [list(cache.resident.get((layer, e), [])) for e in batch]
            taken = [s for ss in slots for s in ss]
            P = cache.pieces
            table = [list(cache.table[(layer * cache.num_experts + e) * P:(layer * cache.num_experts + e + 1) * P])
                     for e in batch]
            if not all(slots) or len(set(taken)) != len(taken) or table != slots:
                problems.append(("a batch expert without slots of its own", layer, batch))
            if not all(p in cache.resident for p in pinned):
                problems.append(("a pinned expert left", layer, batch))
            covered += batch
            yield batch
        if sorted(covered) != sorted(set(int(e) for e in experts)):
            problems.append(("batches do not cover the chosen experts", layer, covered))
    cache.batches = watched
    list(engine.generate(np.random.default_rng(1).integers(3, 400, 30).tolist(), max_new_tokens=20, temperature=0))
    assert engine.expert_stats()["total"]["evictions"] > 0
    assert problems == []


def test_full_budget_decodes_without_uploads(packages):
    engine = Engine.load(packages["mixtral"])
    assert "every expert" in engine.experts.budget.reason and "fits" in engine.experts.budget.reason
    list(engine.generate([5, 6, 7], max_new_tokens=8, temperature=0))
    assert engine.expert_stats()["total"]["lookups"] == 0     # routing never left the GPU


def test_default_budget_follows_host_memory(monkeypatch):
    """On a CPU adapter the default budget is the host's available memory less what the engine needs
    besides the experts and a margin; a GPU adapter asks for every expert."""
    from webmoe.engine import memory
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 20 << 30)
    b = memory.default_budget(True, 8 << 30, 2 << 30)
    assert b.bytes == 8 << 30 and "fits" in b.reason
    b = memory.default_budget(True, 30 << 30, 2 << 30)          # 20 - 2 - 2.5 (margin: 1/8) = 15.5 GiB
    assert b.bytes == (20 << 30) - (2 << 30) - (20 << 30) // 8 and "paged" in b.reason
    assert memory.default_budget(False, 30 << 30, 2 << 30).bytes == 30 << 30


def test_bad_budgets_are_clear_errors(packages):
    slot = Engine.load(packages["mixtral"]).experts.slot_bytes
    with pytest.raises(ExpertCacheError, match="holds no expert"):
        Engine.load(packages["mixtral"], expert_cache_bytes=slot - 1)
    with pytest.raises(ExpertCacheError, match="do not exist"):
        Engine.load(packages["mixtral"], expert_cache_bytes=2 * slot, pinned_experts=[(0, 99)])
    with pytest.raises(ExpertCacheError, match="leave no free slot"):
        Engine.load(packages["mixtral"], expert_cache_bytes=2 * slot, pinned_experts=[(0, 1), (1, 1)])


def test_bench_reports_cache_behaviour_per_budget(packages):
    """The benchmark's bookkeeping (not its speed): all-resident decoding uploads nothing, one slot
    misses every time, every budget is measured in each round (its speed the median of them, with the
    spread), and the table names every budget."""
    from webmoe.tools.bench import bench, table
    rows = bench(packages["mixtral"], tokens=4, repeats=2)
    assert [r["label"] for r in rows] == ["100%", "50%", "50% +prefetch", "25%", "25% +prefetch", "min (1 slot)"]
    assert rows[2]["precision"] is not None and rows[1]["precision"] is None
    assert rows[0]["hit_rate"] == 1.0 and rows[0]["bytes_per_token"] == 0
    assert rows[-1]["slots"] == 1 and rows[-1]["hit_rate"] == 0.0 and rows[-1]["bytes_per_token"] > 0
    assert all(r["repeats"] == 2 and r["tokens_per_s_spread"][0] <= r["tokens_per_s"] <= r["tokens_per_s_spread"][1]
               for r in rows)
    assert "min (1 slot)" in table(rows)


def test_routing_analysis_counts_every_choice(packages, tmp_path):
    """Observed routing: usage counts one per (token, layer, slot-k); co-activation is symmetric with the
    usage on its diagonal; the numerics are those of an engine that does not observe."""
    from webmoe.tools.analyze import analyze, write
    plain = Engine.load(packages["mixtral"])
    observing = Engine.load(packages["mixtral"], observe_routing=True)
    ids = list(range(5, 30))
    np.testing.assert_array_equal(observing.logits(ids), plain.logits(ids))
    cache = observing.experts
    K = observing.package.moe["top_k"]
    for l in cache.moe_layers:
        assert cache.usage[l].sum() == len(ids) * K
        co = cache.coactivation[l]
        np.testing.assert_array_equal(co, co.T)
        np.testing.assert_array_equal(np.diag(co), cache.usage[l])
        assert co.sum() == len(ids) * K * K
    report = analyze(packages["mixtral"], ["Beautiful is better than ugly."], max_new_tokens=5)
    assert report["tokens"] > 5 and sorted(report["layers"]) == ["0", "1", "2"]
    json_path, png_path = write(report, tmp_path / "analysis")
    assert json_path.stat().st_size > 0 and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hot_experts_pinned_in_host_memory(tmp_path):
    """The demo's most-used experts (its routing statistics, half of each layer's tokens) held in host
    memory: with a GPU cache that pages, they are paged in from there (hits counted) and the logits are
    those of the engine without pins; locking is either done or refused with a message saying what to
    change."""
    from webmoe.engine.host_pins import hot_experts
    demo = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
    m = Engine.load(demo).package.manifest
    hot = hot_experts(m, 0.5)
    usage = m["routing_stats"]["usage"]
    for layer, counts in usage.items():        # each layer: its most-used experts, enough for half the tokens
        mine = sorted((counts[e] for l, e in hot if l == int(layer)), reverse=True)
        assert mine == sorted(counts, reverse=True)[:len(mine)] and sum(mine) >= sum(counts) / 2
        assert sum(mine) - mine[-1] < sum(counts) / 2
    slot = m["moe"]["expert_layout"]["slot_bytes"]
    ids = list(range(3, 40))
    plain = Engine.load(demo, expert_cache_bytes=6 * slot).logits(ids)
    locked_before = locked_bytes()
    pinned = Engine.load(demo, expert_cache_bytes=6 * slot, host_pinned_experts=hot)
    np.testing.assert_array_equal(pinned.logits(ids), plain)
    pins = pinned.experts.report()["host_pins"]
    assert pins["experts"] == len(hot) and pins["hits"] > 0
    # locked, as the kernel counts it (VmLck), when RLIMIT_MEMLOCK allows that much; refused, and said, when not
    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    if limit == resource.RLIM_INFINITY or locked_before + pins["bytes"] <= limit:
        assert pins["locked"] and locked_bytes() - locked_before >= pins["bytes"], (pins, locked_bytes())
    else:
        assert not pins["locked"] and "mlock refused" in pins["message"], pins


def locked_bytes() -> int:
    """The process's memory locked with mlock, as /proc/self/status states it."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmLck:"))
    return int(line.split()[1]) * 1024


def test_routing_strategies_change_the_output_and_say_so(tmp_path):
    """Another routing rule than the trained one runs the whole model (the demo, top-1 / hash / capacity)
    and changes its logits, and the engine says so; the trained rule is the default; bad specs and models
    whose router cannot take a strategy are clear errors."""
    from webmoe.engine.errors import OptionError
    demo = Path(__file__).resolve().parent.parent / "demo" / "shakespeare-moe"
    ids = list(range(3, 30))
    trained = Engine.load(demo)
    assert "routing" not in trained.describe()
    base = trained.logits(ids)
    for spec in ("top1", "hash", "capacity:0.5"):
        engine = Engine.load(demo, routing=spec)
        assert "changes the model's output" in engine.describe()
        got = engine.logits(ids)
        assert np.isfinite(got).all() and np.abs(got - base).max() > 1e-3, spec
    np.testing.assert_array_equal(Engine.load(demo, routing="capacity:64").logits(ids), base)   # room for all
    with pytest.raises(OptionError, match="one of model, top1, hash, capacity:FACTOR"):
        Engine.load(demo, routing="random")
    from test_families import CASES
    from tiny_models import save_checkpoint
    model_cls, config = CASES["phimoe"]
    pkg = convert(save_checkpoint(model_cls, config, tmp_path / "ckpt"), tmp_path / "phi", dtype="f32", progress=False)
    with pytest.raises(OptionError, match="routes only as trained"):
        Engine.load(pkg, routing="top1")
