"""The sampler's kernels against numpy (see test_kernels.py): argmax ties, nucleus sampling as numpy's
inverse CDF, and a grammar's token mask."""
import numpy as np
import pytest

from kernel_checks import rand
from kernel_runner import run_plan


def test_sample_greedy_ties(gpu):
    V = 1000
    logits = rand(3, V)
    logits[1, [17, 512, 999]] = 50.0
    out = run_plan(gpu, lambda p: p.sampler("logits", "token", V), {"logits": logits[1:2]},
                   {"token": (np.zeros(1), "u32")}, {"temperature": 0.0, "top_p": 1.0, "u": 0.5, "masked": 0, "sampling": 0})
    assert out["token"][0] == 17


def sample_ref(logits, temperature, top_p, u):
    q = np.exp((logits.astype(np.float64) - logits.max()) / temperature)
    order = np.argsort(-q, kind="stable")
    cum = np.cumsum(q[order]) / q.sum()
    keep = order[: int(np.searchsorted(cum, top_p) + 1)]
    mask = np.zeros_like(q, bool)
    mask[keep] = True
    kept = np.where(mask, q, 0)
    return int(np.searchsorted(np.cumsum(kept), u * kept.sum(), side="right"))


@pytest.mark.parametrize("temperature,top_p,V", [(1.0, 1.0, 517), (0.7, 0.9, 517), (1.3, 0.5, 517),
                                                 (0.9, 0.8, 100), (1.0, 0.95, 3001), (0.5, 1.0, 1)])
def test_sample_matches_inverse_cdf(gpu, temperature, top_p, V):
    """Nucleus sampling as numpy does it by sorting, for vocabularies smaller than the sampler's 256 chunks,
    not a multiple of them, and of one token."""
    logits = rand(1, V) * 3
    for u in [0.01, 0.3, 0.77, 0.999]:
        out = run_plan(gpu, lambda p: p.sampler("logits", "token", V), {"logits": logits},
                       {"token": (np.zeros(1), "u32")}, {"temperature": temperature, "top_p": top_p, "u": u, "masked": 0,
                                                          "sampling": int(temperature > 0)})
        assert out["token"][0] == sample_ref(logits[0], temperature, top_p, u), (u, out["token"][0])


def bit_words(allowed: np.ndarray) -> np.ndarray:
    """A token_mask row from booleans: bit i % 32 of word i // 32 set where token i is allowed."""
    return np.packbits(np.pad(allowed, (0, -len(allowed) % 32)), bitorder="little").view(np.uint32)


@pytest.mark.parametrize("V,share", [(517, 0.3), (3001, 0.01), (64, 1 / 64), (1, 1.0)])
def test_sample_mask_removes_forbidden_tokens(gpu, V, share):
    """A grammar's mask: forbidden logits become the lowest f32 and the sampler draws from the allowed ones
    as numpy does from the masked row (argmax and nucleus sampling), for vocabularies not a multiple of 32;
    masked = 0 dispatches nothing, so the same mask leaves the row whole."""
    rng = np.random.default_rng(V)
    logits = rand(1, V) * 3
    allowed = rng.random(V) < share
    allowed[rng.integers(V)] = True
    masked_ref = np.where(allowed, logits[0], -np.inf)
    for temperature, top_p, u in [(0.0, 1.0, 0.5), (1.0, 1.0, 0.3), (0.7, 0.9, 0.77), (1.3, 0.5, 0.999)]:
        env = {"temperature": temperature, "top_p": top_p, "u": u, "sampling": int(temperature > 0)}
        want = int(np.argmax(masked_ref)) if temperature == 0 else sample_ref(masked_ref, temperature, top_p, u)
        out = run_plan(gpu, lambda p: p.sampler("logits", "token", V), {"token_mask": bit_words(allowed)},
                       {"logits": (logits, "f32"), "token": (np.zeros(1), "u32")}, {**env, "masked": 1},
                       dtypes={"token_mask": "u32"})
        assert out["token"][0] == want and allowed[out["token"][0]], (temperature, u)
        np.testing.assert_array_equal(out["logits"][0], np.where(allowed, logits[0], np.float32(-3.4e38)))
        whole = run_plan(gpu, lambda p: p.sampler("logits", "token", V), {"token_mask": bit_words(allowed)},
                         {"logits": (logits, "f32"), "token": (np.zeros(1), "u32")}, {**env, "masked": 0},
                         dtypes={"token_mask": "u32"})
        np.testing.assert_array_equal(whole["logits"], logits)
        unmasked = int(np.argmax(logits[0])) if temperature == 0 else sample_ref(logits[0], temperature, top_p, u)
        assert whole["token"][0] == unmasked
