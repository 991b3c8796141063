"""Rotary embedding, attention and the KV cache stores against numpy (see test_kernels.py): in place and on
the way (kv_store's keys, attention's ROPE_Q queries), partial and interleaved rotary, GQA, sliding windows,
sinks, batches of sequences and MLA's latent cache."""
import numpy as np
import pytest

from kernel_checks import close, rand
from kernel_runner import run_plan
from webmoe.converter.plan import rope_args


def rope_ref(x, positions, inv_freq, rot, off, interleaved, factor):
    """x [T, heads, D] with dims off .. off + rot of each head rotated (numpy, float64)."""
    ref = x.astype(np.float64)
    ang = positions[:, None] * inv_freq[None, :].astype(np.float64)      # [T, rot/2]
    c, s = (np.cos(ang) * factor)[:, None, :], (np.sin(ang) * factor)[:, None, :]
    seg = x[..., off:off + rot].astype(np.float64)
    view = ref[..., off:off + rot]
    if interleaved:
        a, b = seg[..., 0::2], seg[..., 1::2]
        view[..., 0::2], view[..., 1::2] = a * c - b * s, b * c + a * s
    else:
        a, b = seg[..., :rot // 2], seg[..., rot // 2:]
        view[..., :rot // 2], view[..., rot // 2:] = a * c - b * s, b * c + a * s
    return ref


def inv_freqs(rot):
    return (1.0 / 500.0 ** (np.arange(0, rot, 2) / rot)).astype(np.float32)


@pytest.mark.parametrize("interleaved,off", [(False, 0), (True, 0), (True, 6)])
def test_rope(gpu, interleaved, off):
    T, row0, pos0, nh, D, rot = 5, 3, 11, 3, 18, 12
    x = rand(row0 + T + 2, nh, D)
    inv_freq = inv_freqs(rot)
    positions = pos0 + np.array([0, 1, 2, 40, 3])[:T]                  # tokens of a batch need not be in order
    out = run_plan(gpu, lambda p: p.rope("x", "inv_freq", nh, D, rot, 1.5, row0=row0, interleaved=interleaved,
                                         rot_off=off), {"inv_freq": inv_freq, "positions": positions},
                   {"x": (x, "f32")}, {"T": T}, dtypes=PLACES)
    ref = x.copy()
    ref[row0:row0 + T] = rope_ref(x[row0:row0 + T], positions, inv_freq, rot, off, interleaved, 1.5)
    close(out["x"], ref)


PLACES = {"positions": "u32", "cache_rows": "u32"}


def one_sequence(pos0, T):
    """positions and cache rows of T tokens of one sequence whose rows start at 0."""
    at = np.arange(pos0, pos0 + T)
    return {"positions": at, "cache_rows": at}


def attention_ref(q, kc, vc, positions, window, scale, sinks=None, bases=None):
    """Query t at positions[t] over cache rows bases[t] + 0 .. bases[t] + positions[t] (bases default 0)."""
    T, nh, D = q.shape
    nkv = kc.shape[1]
    out = np.zeros((T, nh, vc.shape[2]))
    for t in range(T):
        p = int(positions[t])
        b = 0 if bases is None else int(bases[t])
        lo = max(0, p - window + 1) if window else 0
        for h in range(nh):
            kv = h // (nh // nkv)
            s = kc[b + lo:b + p + 1, kv] @ q[t, h] * scale
            m = max(s.max(), sinks[h]) if sinks is not None else s.max()
            e = np.exp(s - m)
            z = e.sum() + (np.exp(sinks[h] - m) if sinks is not None else 0)
            out[t, h] = e @ vc[b + lo:b + p + 1, kv] / z
    return out


def test_attention_sinks(gpu):
    T, pos0, nh, nkv, D = 6, 9, 4, 2, 24
    S = pos0 + T
    q, kc, vc, sinks = rand(T, nh, D), rand(S, nkv, D), rand(S, nkv, D), rand(nh) * 3
    out = run_plan(gpu, lambda p: p.attention("q", "k_cache", "v_cache", "out", nh, nkv, D, D, D ** -0.5, window=4,
                                              sinks="sinks"),
                   {"q": q, "k_cache": kc, "v_cache": vc, "sinks": sinks, **one_sequence(pos0, T)},
                   {"out": (np.zeros((T, nh, D)), "f32")}, {"T": T}, dtypes=PLACES)
    close(out["out"], attention_ref(q, kc, vc, pos0 + np.arange(T), 4, D ** -0.5, sinks))


@pytest.mark.parametrize("T,pos0,nh,nkv,D,Dv,window", [
    (1, 130, 6, 2, 20, 20, 0),     # decode over more than two 64-key chunks, GQA
    (7, 0, 3, 3, 33, 17, 0),       # prefill, MHA, value dim differs from key dim (MLA)
    (9, 70, 4, 1, 16, 16, 5),      # sliding window shorter than the sequence, MQA
    (2, 3, 2, 2, 200, 200, 0),     # head dims above 128: several dims per lane
])
def test_attention(gpu, T, pos0, nh, nkv, D, Dv, window):
    S = pos0 + T + 3
    q, kc, vc = rand(T, nh, D), rand(S, nkv, D), rand(S, nkv, Dv)
    scale = D ** -0.5
    out = run_plan(gpu, lambda p: p.attention("q", "k_cache", "v_cache", "out", nh, nkv, D, Dv, scale, window=window),
                   {"q": q, "k_cache": kc, "v_cache": vc, **one_sequence(pos0, T)},
                   {"out": (np.zeros((T, nh, Dv)), "f32")}, {"T": T}, dtypes=PLACES)
    close(out["out"], attention_ref(q, kc, vc, pos0 + np.arange(T), window, scale))


def test_attention_of_a_batch_of_sequences(gpu):
    """Decoding several sequences at once: each query attends only to its own sequence's cache rows
    (sequence b's rows start at b * L), at its own position, with a sliding window for good measure."""
    L, nh, nkv, D = 50, 4, 2, 16
    positions, seqs = np.array([0, 17, 49, 5, 33]), np.array([2, 0, 1, 4, 3])
    T = len(positions)
    q, kc, vc = rand(T, nh, D), rand(5 * L, nkv, D), rand(5 * L, nkv, D)
    places = {"positions": positions, "cache_rows": seqs * L + positions}
    for window in (0, 8):
        out = run_plan(gpu, lambda p: p.attention("q", "k_cache", "v_cache", "out", nh, nkv, D, D, 0.3, window=window),
                       {"q": q, "k_cache": kc, "v_cache": vc, **places}, {"out": (np.zeros((T, nh, D)), "f32")},
                       {"T": T}, dtypes=PLACES)
        close(out["out"], attention_ref(q, kc, vc, positions, window, 0.3, bases=seqs * L))


def test_kv_write(gpu):
    T, rows, width = 4, 9, 13
    src, cache = rand(T, width), rand(rows, width)
    cache_rows = np.array([7, 0, 3, 8])
    out = run_plan(gpu, lambda p: p.kv_write("src", "cache", width), {"src": src, "cache_rows": cache_rows},
                   {"cache": (cache, "f32")}, {"T": T}, dtypes={"cache_rows": "u32"})
    ref = cache.copy()
    ref[cache_rows] = src
    np.testing.assert_array_equal(out["cache"], ref.astype(np.float32))


@pytest.mark.parametrize("rope,interleaved,off,rot", [(False, False, 0, 0), (True, False, 0, 16),
                                                     (True, True, 0, 16), (True, True, 6, 8), (True, False, 2, 10)])
def test_kv_store(gpu, rope, interleaved, off, rot):
    """Keys (rotated on the way, partial rotary included) and values of T tokens into their cache rows;
    the values' head dim differs from the keys'."""
    T, rows, nkv, D, Dv = 4, 9, 3, 16, 12
    k, v, kc, vc = rand(T, nkv, D), rand(T, nkv, Dv), rand(rows, nkv * D), rand(rows, nkv * Dv)
    positions, cache_rows = np.array([5, 0, 2, 7]), np.array([7, 0, 3, 8])
    inv_freq = inv_freqs(max(rot, 2))
    args = rope_args("inv_freq", rot, 1.25, off, interleaved) if rope else None
    out = run_plan(gpu, lambda p: p.kv_store("k", "v", "k_cache", "v_cache", nkv, D, Dv, args),
                   {"k": k, "v": v, "inv_freq": inv_freq, "positions": positions, "cache_rows": cache_rows},
                   {"k_cache": (kc, "f32"), "v_cache": (vc, "f32")}, {"T": T}, dtypes=PLACES)
    want_k, want_v = kc.copy(), vc.copy()
    want_k[cache_rows] = (rope_ref(k, positions, inv_freq, rot, off, interleaved, 1.25) if rope else k).reshape(T, -1)
    want_v[cache_rows] = v.reshape(T, -1)
    close(out["k_cache"], want_k)
    np.testing.assert_array_equal(out["v_cache"], want_v.astype(np.float32))


@pytest.mark.parametrize("interleaved,off,rot", [(False, 0, 20), (True, 4, 12)])
def test_attention_rotates_its_queries(gpu, interleaved, off, rot):
    """ROPE_Q: attention over q as it would be after rope, q itself left as it was."""
    T, pos0, nh, nkv, D = 3, 40, 4, 2, 20
    S = pos0 + T
    q, kc, vc = rand(T, nh, D), rand(S, nkv, D), rand(S, nkv, D)
    inv_freq = inv_freqs(rot)
    args = rope_args("inv_freq", rot, 0.9, off, interleaved)
    out = run_plan(gpu, lambda p: p.attention("q", "k_cache", "v_cache", "out", nh, nkv, D, D, 0.2, rope=args),
                   {"q": q, "k_cache": kc, "v_cache": vc, "inv_freq": inv_freq, **one_sequence(pos0, T)},
                   {"out": (np.zeros((T, nh, D)), "f32")}, {"T": T}, dtypes=PLACES)
    positions = pos0 + np.arange(T)
    close(out["out"], attention_ref(rope_ref(q, positions, inv_freq, rot, off, interleaved, 0.9), kc, vc, positions,
                                    0, 0.2))


def test_attention_over_a_latent_cache(gpu):
    """MLA's absorbed form: one buffer of [latent | rotary key] rows is the keys of every head (MQA) and
    its first r values are the values."""
    T, pos0, nh, r, dr = 3, 66, 4, 70, 8        # D = 78, Dv = 70: two dims per lane
    S, D = pos0 + T + 2, r + dr
    q, kv = rand(T, nh, D), rand(S, D)
    out = run_plan(gpu, lambda p: p.attention("q", "kv", "kv", "out", nh, 1, D, r, 0.1, k_stride=D, v_stride=D),
                   {"q": q, "kv": kv, **one_sequence(pos0, T)}, {"out": (np.zeros((T, nh, r)), "f32")}, {"T": T},
                   dtypes=PLACES)
    close(out["out"], attention_ref(q, kv[:, None, :], kv[:, None, :r], pos0 + np.arange(T), 0, 0.1))
