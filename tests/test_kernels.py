"""Every kernel in shaders/ against a numpy reference, with sizes that are not powers of two. Kernels run
as the plan builder states them (kernel_runner.run_plan): the same steps, geometry and dispatch a package
holds."""
import numpy as np
import pytest

from kernel_runner import as_stored, run_plan
from webmoe.converter.plan import rope_args
from measured import record

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# relative to max(1, largest reference value): 1.44e-6 at most over 131 kernel outputs, 7x (was 1e-4); the
# router weights (after softmax or sigmoid), held to 1e-6, measured 1.48e-7 at most over 12, 6.8x (was 1e-5)
def close(a, b, tol=1e-5):
    scale = max(1.0, float(np.abs(b).max()))
    err = record(f"kernel outputs vs numpy ({tol:g})", tol, float(np.abs(a - b).max()) / scale)
    assert err <= tol, f"max abs err {np.abs(a - b).max()} (scale {scale})"


QUANTISED = ("q8", "q4", "mxfp4")


@pytest.mark.parametrize("wdtype,max_binding", [("f32", 1 << 27), ("f16", 1 << 27), ("f32", 1024), ("f16", 1024),
                                                *((q, b) for q in QUANTISED for b in (1 << 27, 1024))])
def test_embed(gpu, wdtype, max_binding):
    """Rows of any format; 1024 cuts the table into row parts, each encoded on its own."""
    V, H, T = 37, 71, 5
    w = rand(V, H)
    ids = np.array([3, 0, 36, 3, 17], np.uint32)
    out = run_plan(gpu, lambda p: p.embed("ids", "w", "y", H), {"ids": ids, "w": w}, {"y": (np.zeros((T, H)), "f32")},
                   {"T": T}, dtypes={"ids": "u32", "w": wdtype}, max_binding=max_binding)
    np.testing.assert_array_equal(out["y"], as_stored(w, wdtype, max_binding)[ids])


def test_layernorm(gpu):
    rows, H, eps = 5, 77, 1e-5
    x, wt, b = rand(rows, H) + 3.0, rand(H), rand(H)
    mu = x.mean(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * wt + b
    out = run_plan(gpu, lambda p: p.rmsnorm("x", "weight", "y", rows, H, eps, bias="bias"),
                   {"weight": wt, "x": x, "bias": b}, {"y": (np.zeros_like(x), "f32")})
    close(out["y"], ref)


@pytest.mark.parametrize("in_place,extra", [(False, 0), (True, 0), (True, 11)])
def test_rmsnorm(gpu, in_place, extra):
    """extra: rows are H + extra values apart and only their first H are normalised (MLA's latent)."""
    rows, row0, H, eps = 7, 3, 93, 1e-5
    x, wt = rand(row0 + rows + 2, H + extra), rand(H)
    ref = x.copy()
    seg = x[row0:row0 + rows, :H]
    ref[row0:row0 + rows, :H] = seg / np.sqrt((seg.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * wt
    if in_place:
        out = run_plan(gpu, lambda p: p.rmsnorm(None, "weight", "y", rows, H, eps, row0=row0, stride=H + extra),
                       {"weight": wt}, {"y": (x, "f32")})
    else:
        out = run_plan(gpu, lambda p: p.rmsnorm("x", "weight", "y", rows, H, eps, row0=row0), {"weight": wt, "x": x},
                       {"y": (x.copy(), "f32")})
    close(out["y"], ref)


def test_silu_mul_and_gated_add(gpu):
    T, I = 8, 125
    g, u = rand(T, I) * 4, rand(T, I)
    out = run_plan(gpu, lambda p: p.silu_mul("gate", "up", "y", I), {"gate": g, "up": u}, {"y": (np.zeros((T, I)), "f32")},
                   {"T": T})
    close(out["y"], g / (1 + np.exp(-g)) * u)
    T, H = 5, 70
    logit, x, y = rand(T, 1) * 3, rand(T, H), rand(T, H)
    out = run_plan(gpu, lambda p: p.gated_add("gate_logit", "x", "y", H), {"gate_logit": logit, "x": x}, {"y": (y, "f32")},
                   {"T": T})
    close(out["y"], y + x / (1 + np.exp(-logit)))


@pytest.mark.parametrize("wdtype,T,K,N,bias,acc,geometry,max_binding", [
    ("f32", 1, 67, 45, False, False, None, 1 << 27),   # decode
    ("f32", 13, 130, 29, True, True, None, 1 << 27),   # prefill with a partial token tile, bias, accumulate
    ("f16", 9, 51, 33, False, False, None, 1 << 27),   # odd K: f16 rows start mid-word
    ("f16", 3, 200, 7, True, False, None, 1 << 27),
    # K a multiple of 8: eight weights at a time (VEC8)
    ("f32", 1, 64, 45, False, False, None, 1 << 27), ("f16", 11, 96, 19, True, True, None, 1 << 27),
    # another geometry changes kernel and dispatch together (one source): still exact; 16 lanes per row
    # reduce through workgroup memory (lavapipe's subgroups hold 8), 2 lanes per row by subgroup shuffles
    ("f16", 13, 130, 29, True, True, {"matmul": {"ROWS": 2, "TOKENS": 5, "LANES": 32}}, 1 << 27),
    ("f16", 13, 136, 29, True, True, {"matmul": {"ROWS": 2, "TOKENS": 5, "LANES": 32}}, 1 << 27),
    ("f32", 13, 136, 29, True, True, {"matmul": {"ROWS": 32, "TOKENS": 3, "LANES": 64}}, 1 << 27),
    # the weight split into row parts of at most 2 KiB (one step per part, each writing its columns)
    ("f32", 13, 130, 29, True, True, None, 2048),
    ("f16", 9, 51, 33, True, False, None, 1024),
    # block formats: one block, blocks running across row ends (K not a multiple of the block), many
    # blocks, a partial last block, and row parts each encoded on their own
    *((q, 1, 67, 45, False, False, None, 1 << 27) for q in QUANTISED),
    *((q, 13, 130, 29, True, True, None, 1 << 27) for q in QUANTISED),
    *((q, 3, 512, 40, False, False, None, 1 << 27) for q in QUANTISED),
    *((q, 5, 256, 7, True, False, {"matmul": {"ROWS": 2, "TOKENS": 5, "LANES": 32}}, 1 << 27) for q in QUANTISED),
    *((q, 9, 51, 33, True, False, None, 1024) for q in QUANTISED),
])
def test_matmul(gpu, wdtype, T, K, N, bias, acc, geometry, max_binding):
    x_row0, y_row0 = 2, 1
    x, w, b, y0 = rand(T + x_row0 + 1, K), rand(N, K), rand(N), rand(T + y_row0, N)
    inputs = {"x": x, "w": w}
    if bias:
        inputs["bias"] = b
    out = run_plan(gpu, lambda p: p.matmul("x", "w", "y", K, N, x_row0=x_row0, y_row0=y_row0, accumulate=acc,
                                           bias="bias" if bias else None),
                   inputs, {"y": (y0, "f32")}, {"T": T}, dtypes={"w": wdtype}, geometry=geometry,
                   max_binding=max_binding)
    wq = as_stored(w, wdtype, max_binding)
    ref = y0.copy()
    r = x[x_row0:x_row0 + T].astype(np.float64) @ wq.T.astype(np.float64) + (b if bias else 0)
    ref[y_row0:y_row0 + T] = r + (y0[y_row0:y_row0 + T] if acc else 0)
    close(out["y"], ref)


@pytest.mark.parametrize("wdtype,max_binding", [("f32", 1 << 27), ("f16", 1024), ("q8", 1 << 27), ("q4", 1 << 27)])
def test_matmul_splits_its_output(gpu, wdtype, max_binding):
    """SPLIT_Y: one joined weight's output columns into three buffers of their own widths (q, k and v), with a
    bias, over several token tiles; with a 1 KiB binding limit the f16 weight is cut into row parts whose
    rows straddle the buffers' boundaries."""
    T, K, widths = 11, 64, (36, 28, 24)
    x, w, b = rand(T, K), rand(sum(widths), K), rand(sum(widths))
    out = run_plan(gpu, lambda p: p.matmul("x", "w", "q", K, sum(widths), bias="bias",
                                           split_y=[("q", widths[0]), ("k", widths[1]), ("v", widths[2])]),
                   {"x": x, "w": w, "bias": b},
                   {name: (np.zeros((T, n)), "f32") for name, n in zip("qkv", widths)}, {"T": T},
                   dtypes={"w": wdtype}, max_binding=max_binding)
    ref = x.astype(np.float64) @ as_stored(w, wdtype, max_binding).T.astype(np.float64) + b
    edges = np.cumsum((0,) + widths)
    for name, lo, hi in zip("qkv", edges, edges[1:]):
        close(out[name], ref[:, lo:hi])


def test_matmul_heads_and_strides(gpu):
    """Per-head weights over column slices of wider rows, written into column slices of wider rows (MLA's
    query absorption): y[t, y_col0 + h*y_hs + n] = x[t, x_col0 + h*x_hs + :K] @ w[h*N + n]."""
    T, nh, K, N, x_hs, y_hs, x_col0, y_col0 = 5, 3, 9, 7, 11, 10, 2, 3
    x_stride, y_stride = nh * x_hs + 4, nh * y_hs + 5
    x, w, b, y0 = rand(T, x_stride), rand(nh * N, K), rand(nh * N), rand(T, y_stride)
    out = run_plan(gpu, lambda p: p.matmul("x", "w", "y", K, N, bias="bias", x_stride=x_stride, x_col0=x_col0,
                                           y_stride=y_stride, y_col0=y_col0, heads=nh, x_hstride=x_hs, y_hstride=y_hs),
                   {"x": x, "w": w, "bias": b}, {"y": (y0, "f32")}, {"T": T})
    ref = y0.copy()
    for h in range(nh):
        xs = x[:, x_col0 + h * x_hs:x_col0 + h * x_hs + K].astype(np.float64)
        ref[:, y_col0 + h * y_hs:y_col0 + h * y_hs + N] = xs @ w[h * N:(h + 1) * N].T + b[h * N:(h + 1) * N]
    close(out["y"], ref)


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


@pytest.mark.parametrize("scoring,normalize,K,scale", [("softmax", 1, 2, 1.0), ("softmax", 0, 3, 1.0),
                                                       ("sigmoid", 1, 4, 2.5), ("softmax", 1, 1, 1.0)])
def test_router(gpu, scoring, normalize, K, scale):
    T, E = 11, 13
    logits = rand(T, E)
    out = run_plan(gpu, lambda p: p.router("logits", "topk_ids", "topk_w", E, K, scoring, bool(normalize), scale),
                   {"logits": logits}, {"topk_ids": (np.zeros((T, K)), "u32"), "topk_w": (np.zeros((T, K)), "f32")},
                   {"T": T})
    if scoring == "softmax":
        prob = np.exp(logits - logits.max(-1, keepdims=True))
        prob /= prob.sum(-1, keepdims=True)
    else:
        prob = 1 / (1 + np.exp(-logits))
    ids = np.argsort(-prob, axis=-1, kind="stable")[:, :K]
    w = np.take_along_axis(prob, ids, -1)
    if normalize:
        w /= w.sum(-1, keepdims=True)
    np.testing.assert_array_equal(out["topk_ids"], ids)
    close(out["topk_w"], w * scale, 1e-6)


def hash_expert(token_id: int, E: int) -> int:
    h = (token_id * 2654435761) % 2**32
    h ^= h >> 15
    h = (h * 2246822519) % 2**32
    h ^= h >> 13
    return h % E


@pytest.mark.parametrize("strategy,scoring,normalize", [("top1", "softmax", True), ("top1", "sigmoid", False),
                                                        ("hash", "softmax", True), ("capacity:1.0", "softmax", True),
                                                        ("capacity:0.5", "sigmoid", False)])
def test_router_strategies(gpu, strategy, scoring, normalize):
    """The routing strategies of engine/routing.py against numpy: top-1 switch, hash of the token id, and a
    capacity factor with overflow to the next-best expert with room, in token order."""
    from webmoe.engine.routing import apply_routing
    T, E, K, scale = 12, 7, 3, 1.5
    logits, token_ids = rand(T, E), np.arange(100, 100 + T) * 7

    def build(p):
        i = p.router("logits", "topk_ids", "topk_w", E, K, scoring, normalize, scale)
        p.steps = apply_routing({"steps": p.steps, "moe_layers": [{"router_step": i}], "io": {"ids": "ids"}},
                                strategy)["steps"]
    out = run_plan(gpu, build, {"logits": logits, "ids": token_ids}, {"topk_ids": (np.zeros((T, K)), "u32"),
                                                                      "topk_w": (np.zeros((T, K)), "f32")},
                   {"T": T}, dtypes={"ids": "u32"})
    score = np.exp(logits - logits.max(-1, keepdims=True)) if scoring == "softmax" else 1 / (1 + np.exp(-logits))
    if scoring == "softmax":
        score /= score.sum(-1, keepdims=True)
    ids, w = np.zeros((T, K), np.int64), np.zeros((T, K))
    if strategy in ("top1", "hash"):
        for t in range(T):
            e = int(np.argmax(logits[t])) if strategy == "top1" else hash_expert(int(token_ids[t]), E)
            ids[t] = e
            w[t, 0] = (1.0 if normalize else score[t, e]) if strategy == "top1" else 1.0
    else:
        capacity = int(np.ceil(float(strategy.split(":")[1]) * T * K / E - 1e-9))
        load = np.zeros(E, np.int64)
        for t in range(T):
            order = np.argsort(-logits[t], kind="stable")
            for j in range(K):
                free = [e for e in order if e not in ids[t, :j] and load[e] < capacity]
                e = free[0] if free else next(e for e in order if e not in ids[t, :j])
                ids[t, j], load[e] = e, load[e] + 1
            w[t] = score[t, ids[t]]
            if normalize:
                w[t] /= w[t].sum()
        assert load.max() > capacity or capacity * E >= T * K      # overflow happened, or room for all
    np.testing.assert_array_equal(out["topk_ids"], ids)
    close(out["topk_w"], w * scale, 1e-6)


def test_router_sparsemixer(gpu):
    """PhiMoE's inference routing, against a numpy transcription of transformers' sparsemixer."""
    T, E, K, eps = 16, 9, 2, 0.2
    logits = rand(T, E)
    logits[3, :] = 0.0          # all tied at zero: the relative threshold divides 0 by 0
    out = run_plan(gpu, lambda p: p.router("logits", "topk_ids", "topk_w", E, K, "sparsemixer", False, jitter_eps=eps),
                   {"logits": logits}, {"topk_ids": (np.zeros((T, K)), "u32"), "topk_w": (np.zeros((T, K)), "f32")},
                   {"T": T})
    for t in range(T):
        s = logits[t].astype(np.float64)
        masked = s.copy()
        for j in range(K):
            e = int(np.argmax(masked))
            m = masked[e]
            with np.errstate(invalid="ignore", divide="ignore"):
                drop = (m - s) / np.maximum(np.abs(s), m) > 2 * eps
            g = np.where(drop, -np.inf, masked)
            w = np.exp(g[e] - g.max()) / np.exp(g - g.max()).sum()
            assert out["topk_ids"][t, j] == e
            assert abs(out["topk_w"][t, j] - w) < 1e-6, (t, j)
            masked[e] = -np.inf


@pytest.mark.parametrize("n_group,topk_group,K", [(4, 2, 3), (1, 1, 2), (8, 3, 4)])
def test_router_grouped_sigmoid_with_bias(gpu, n_group, topk_group, K):
    """DeepSeek-V3 routing against a numpy transcription of transformers' DeepseekV3TopkRouter."""
    T, E, scale = 13, 16, 2.5
    logits, bias = rand(T, E), rand(E) * 0.3
    out = run_plan(gpu, lambda p: p.router("logits", "topk_ids", "topk_w", E, K, "sigmoid_grouped", True, scale,
                                           bias="bias", n_group=n_group, topk_group=topk_group),
                   {"logits": logits, "bias": bias},
                   {"topk_ids": (np.zeros((T, K)), "u32"), "topk_w": (np.zeros((T, K)), "f32")}, {"T": T})
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    choice = scores + bias
    group = np.sort(choice.reshape(T, n_group, -1), -1)[..., -2:].sum(-1)          # [T, n_group]
    keep = np.zeros((T, n_group), bool)
    np.put_along_axis(keep, np.argsort(-group, -1, kind="stable")[:, :topk_group], True, -1)
    masked = np.where(np.repeat(keep, E // n_group, -1), choice, -np.inf)
    ids = np.argsort(-masked, -1, kind="stable")[:, :K]
    w = np.take_along_axis(scores, ids, -1)
    w = w / (w.sum(-1, keepdims=True) + 1e-20) * scale
    np.testing.assert_array_equal(out["topk_ids"], ids)
    close(out["topk_w"], w, 1e-6)


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


def gather(gpu, ids: np.ndarray, E: int) -> dict:
    """moe_gather of topk_ids [T, K] over E experts: expert_offsets, pair_order, active_experts."""
    T, K = ids.shape
    return run_plan(gpu, lambda p: p.moe_gather("topk_ids", "expert_offsets", "pair_order", "active_experts", E, K),
                    {"topk_ids": ids}, {"expert_offsets": (np.zeros(E + 1), "u32"), "pair_order": (np.zeros(T * K), "u32"),
                                        "active_experts": (np.zeros(2 * E + 1), "u32")}, {"T": T},
                    dtypes={"topk_ids": "u32"})


@pytest.mark.parametrize("T,K,E,used", [(23, 3, 10, 10), (5, 2, 12, 4), (1, 2, 9, 9)])
def test_moe_gather(gpu, T, K, E, used):
    """Pairs sorted by expert, and the list of experts with pairs (some experts get none)."""
    pool = rng.choice(E, used, replace=False)
    ids = np.stack([rng.choice(pool, K, replace=False) for _ in range(T)]).astype(np.uint32)
    check_gather(gather(gpu, ids, E), ids, E)


def check_gather(out: dict, ids: np.ndarray, E: int) -> None:
    """expert_offsets, pair_order and active_experts as moe_gather's contract states them, from numpy."""
    counts = np.bincount(ids.reshape(-1), minlength=E)
    np.testing.assert_array_equal(out["expert_offsets"], np.concatenate([[0], np.cumsum(counts)]))
    flat = ids.reshape(-1)
    for e in range(E):
        group = out["pair_order"][out["expert_offsets"][e]:out["expert_offsets"][e + 1]]
        assert sorted(group) == list(np.nonzero(flat == e)[0])
    active = np.nonzero(counts)[0]
    np.testing.assert_array_equal(out["active_experts"][:E + 1], np.concatenate([[0], np.cumsum(counts > 0)]))
    np.testing.assert_array_equal(out["active_experts"][E + 1:E + 1 + len(active)], active)


@pytest.mark.parametrize("T,K,E,scoring", [(150, 2, 8, "softmax"), (1, 4, 13, "sigmoid"), (64, 8, 40, "softmax")])
def test_router_gathers_the_pairs_by_expert(gpu, T, K, E, scoring):
    """GATHER: one workgroup routes every token (more tokens than lanes included) and then sorts the pairs
    by expert; the top-k equal numpy's and the sort meets moe_gather's contract."""
    logits = rand(T, E)
    out = run_plan(gpu, lambda p: p.router("logits", "topk_ids", "topk_w", E, K, scoring, True,
                                           gather=("expert_offsets", "pair_order", "active_experts")),
                   {"logits": logits}, {"topk_ids": (np.zeros((T, K)), "u32"), "topk_w": (np.zeros((T, K)), "f32"),
                                        "expert_offsets": (np.zeros(E + 1), "u32"),
                                        "pair_order": (np.zeros(T * K), "u32"),
                                        "active_experts": (np.zeros(2 * E + 1), "u32")}, {"T": T})
    score = logits if scoring == "softmax" else 1 / (1 + np.exp(-logits))      # both rank as the logits do
    ids = np.argsort(-score, axis=-1, kind="stable")[:, :K]
    np.testing.assert_array_equal(out["topk_ids"], ids)
    check_gather(out, ids, E)


def silu(v):
    return v / (1 + np.exp(-v))


def build_slab(parts_per_expert, slot_of, layer, E, L, wdtype, max_binding=1 << 27):
    """Slab words as the writer lays out an expert's pieces (writer.expert_pieces), piece p of expert e in
    slot slot_of[(layer * E + e) * pieces + p]. Returns (slab words, layout)."""
    from webmoe.converter.quant import encode
    from webmoe.converter.writer import expert_pieces
    from webmoe.format.expert_layout import expert_layout
    layout = expert_layout({k: v.shape for k, v in parts_per_expert[0].items()}, wdtype, max_binding)
    P = layout["pieces"]
    slab = bytearray(L * E * P * layout["slot_bytes"])
    for e in range(E):
        for piece, arrays in enumerate(expert_pieces(parts_per_expert[e], layout)):
            base = int(slot_of[(layer * E + e) * P + piece]) * layout["slot_bytes"]
            for role, arr in arrays.items():
                data = encode(arr, layout[role]["dtype"])
                slab[base + layout[role]["offset"]:base + layout[role]["offset"] + len(data)] = data
    return np.frombuffer(bytes(slab), np.uint32), layout


def stored_expert(parts: dict, layout: dict) -> dict:
    """An expert's weights as the kernels read them: each piece's parts encoded on their own, decoded by
    numpy, and put back together (gate and up by rows, down by columns)."""
    from webmoe.converter.writer import expert_pieces
    pieces = [{r: as_stored(a, layout[r]["dtype"]) for r, a in piece.items()} for piece in expert_pieces(parts, layout)]
    return {r: pieces[0][r] if r == "down_bias" else np.concatenate([p[r] for p in pieces], axis=int(r == "down"))
            for r in parts}


@pytest.mark.parametrize("wdtype,gpt_oss,geometry,max_binding,sizes", [
    ("f32", False, None, 1 << 27, None), ("f16", False, None, 1 << 27, None), ("f32", True, None, 1 << 27, None),
    ("f16", True, None, 1 << 27, None),
    # another geometry changes kernels and dispatches together (one source): still exact (16 lanes per row
    # reduce through workgroup memory, 4 by subgroup shuffles where the adapter has them)
    ("f16", True, {"moe_gate_up": {"ROWS": 2, "TILE": 5, "LANES": 32}, "moe_down": {"ROWS": 16, "TILE": 3}}, 1 << 27,
     None),
    # experts cut into pieces along I (slots of at most 3 KiB): the pieces' outputs add up
    ("f32", True, None, 3072, None), ("f16", False, None, 2048, None),
    # block formats: parts starting on block boundaries inside the slot, f32 biases between them, pieces
    ("q8", False, None, 1 << 27, None), ("q8", True, None, 1 << 27, None), ("q4", False, None, 1 << 27, None),
    ("q4", True, None, 1 << 27, None), ("mxfp4", True, None, 1 << 27, None), ("mxfp4", False, None, 1 << 27, None),
    ("q8", True, None, 3072, None), ("q4", False, None, 1400, None), ("mxfp4", True, None, 3500, None),
    # H and I multiples of 8: eight weights at a time (VEC8) in both kernels, for every format and in pieces
    *((q, True, None, 1 << 27, (64, 96)) for q in ("f32", "f16", *QUANTISED)),
    ("f16", False, {"moe_gate_up": {"ROWS": 2, "TILE": 5, "LANES": 32}, "moe_down": {"ROWS": 16, "TILE": 3}}, 1 << 27,
     (64, 96)),
    ("q8", False, None, 8192, (64, 96)),
])
def test_grouped_experts_and_scatter_add(gpu, wdtype, gpt_oss, geometry, max_binding, sizes):
    """moe_gate_up + moe_down over a slab whose slots are shuffled, then scatter_add, vs a dense loop.
    gpt_oss: slot biases and the clamped SwiGLU."""
    T, K, E, layer, L = 19, 2, 5, 1, 2
    H, I = sizes or (37, 70 if wdtype == "mxfp4" else 23)
    x, gate, up, down = rand(T, H), rand(E, I, H), rand(E, I, H), rand(E, H, I)
    gb, ub, db = rand(E, I), rand(E, I), rand(E, H)
    alpha, limit = 1.702, 2.5
    ids = np.stack([rng.choice(E, K, replace=False) for _ in range(T)]).astype(np.uint32)
    topw = rng.random((T, K)).astype(np.float32)
    parts = [{"gate": gate[e], "up": up[e], "down": down[e],
              **({"gate_bias": gb[e], "up_bias": ub[e], "down_bias": db[e]} if gpt_oss else {})} for e in range(E)]
    from webmoe.format.expert_layout import expert_layout
    P = expert_layout({k: v.shape for k, v in parts[0].items()}, wdtype, max_binding)["pieces"]
    assert (P > 1) == (max_binding < 1 << 27)
    slot_of = rng.permutation(L * E * P).astype(np.uint32)        # [L, E, P]
    slab, layout = build_slab(parts, slot_of, layer, E, L, wdtype, max_binding)
    stored = [stored_expert(p, layout) for p in parts]
    g = gather(gpu, ids, E)
    activation = {"kind": "clamped_swiglu", "alpha": alpha, "limit": limit} if gpt_oss else None
    inputs = {"x": x, "experts": slab, "expert_bank": np.array([0, L * E * P, 0, E], np.uint32),
              "expert_slots": slot_of, "expert_offsets": g["expert_offsets"], "pair_order": g["pair_order"],
              "active_experts": g["active_experts"]}
    out = run_plan(gpu, lambda p: p.moe_experts("x", "act", "y", "expert_offsets", "pair_order", "active_experts", layer,
                                                E, K, H, I, layout, wdtype, activation),
                   inputs, {"act": (np.zeros((T * K, layout["piece_rows"])), "f32"), "y": (np.zeros((T * K, H)), "f32")},
                   {"T": T, "bank_experts": E}, dtypes={n: "u32" for n in inputs if n != "x"}, geometry=geometry)
    act, y = out["act"], out["y"]
    ref_act = np.zeros((T * K, I))
    ref_y = np.zeros((T * K, H))
    for t in range(T):
        for j in range(K):
            e = ids[t, j]
            gv, uv = stored[e]["gate"] @ x[t], stored[e]["up"] @ x[t]
            if gpt_oss:
                gv, uv = np.minimum(gv + gb[e], limit), np.clip(uv + ub[e], -limit, limit)
                a = (uv + 1) * gv / (1 + np.exp(-alpha * gv))
            else:
                a = silu(gv) * uv
            ref_act[t * K + j] = a
            ref_y[t * K + j] = stored[e]["down"] @ a + (db[e] if gpt_oss else 0)
    last = (P - 1) * layout["piece_rows"]      # act holds the last piece's share of the intermediate dims, [pairs, I - last]
    close(act.reshape(-1)[:T * K * (I - last)].reshape(T * K, I - last), ref_act[:, last:])
    close(y, ref_y)
    resid = rand(T, H)
    out = run_plan(gpu, lambda p: p.scatter_add("expert_out", "topk_w", "y", K, H), {"expert_out": y, "topk_w": topw},
                   {"y": (resid, "f32")}, {"T": T})
    close(out["y"], resid + np.einsum("tk,tkh->th", topw, ref_y.reshape(T, K, H)))


def test_experts_outside_the_bound_bank_are_skipped(gpu):
    """With the bound bank holding another slot range, no output is written for these experts."""
    T, K, E, H, I = 3, 1, 2, 8, 6
    ids = np.zeros((T, K), np.uint32)
    act0 = np.full((T * K, I), 7.0, np.float32)
    from webmoe.format.expert_layout import expert_layout
    layout = expert_layout({"gate": (I, H), "up": (I, H), "down": (H, I)}, "f32")
    inputs = {"x": rand(T, H), "experts": rand(2 * layout["slot_elems"]), "expert_slots": np.array([0, 1], np.uint32),
              "expert_bank": np.array([1, 1, 0, E], np.uint32),
              "expert_offsets": np.array([0, T, T], np.uint32), "pair_order": np.arange(T, dtype=np.uint32),
              "active_experts": np.array([0, 1, 1, 0, 0], np.uint32)}         # expert 0 alone has pairs
    out = run_plan(gpu, lambda p: p.moe_experts("x", "act", "y", "expert_offsets", "pair_order", "active_experts", 0, E,
                                                K, H, I, layout, "f32"),
                   inputs, {"act": (act0, "f32"), "y": (np.zeros((T * K, H)), "f32")}, {"T": T, "bank_experts": E},
                   dtypes={n: "u32" for n in inputs if n not in ("x", "experts")})
    np.testing.assert_array_equal(out["act"], act0)
    np.testing.assert_array_equal(out["y"], 0)


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


def run_window(gpu, ids: np.ndarray, E: int, H: int, I: int, wdtype: str, window: tuple[int, int]):
    """Random experts in slots 0..E-1, pairs routed by ids [T, K], the expert kernels run over one bank
    whose window is experts window[0] .. window[0] + window[1]: (y [T*K, H], the stored experts, x)."""
    T, K = ids.shape
    from webmoe.format.expert_layout import expert_layout
    layout = expert_layout({"gate": (I, H), "up": (I, H), "down": (H, I)}, wdtype)
    x, gate, up, down = rand(T, H), rand(E, I, H), rand(E, I, H), rand(E, H, I)
    parts = [{"gate": gate[e], "up": up[e], "down": down[e]} for e in range(E)]
    slot_of = np.arange(E, dtype=np.uint32)
    slab, _ = build_slab(parts, slot_of, 0, E, 1, wdtype)
    g = gather(gpu, ids, E)
    inputs = {"x": x, "experts": slab, "expert_bank": np.array([0, E, *window], np.uint32), "expert_slots": slot_of,
              "expert_offsets": g["expert_offsets"], "pair_order": g["pair_order"],
              "active_experts": g["active_experts"]}
    out = run_plan(gpu, lambda p: p.moe_experts("x", "act", "y", "expert_offsets", "pair_order", "active_experts", 0, E,
                                                K, H, I, layout, wdtype),
                   inputs, {"act": (np.zeros((T * K, I)), "f32"), "y": (np.zeros((T * K, H)), "f32")},
                   {"T": T, "bank_experts": window[1]}, dtypes={n: "u32" for n in inputs if n != "x"})
    return out["y"], [stored_expert(p, layout) for p in parts], x


def expert_ffn(s: dict, x: np.ndarray) -> np.ndarray:
    return s["down"] @ (silu(s["gate"] @ x) * (s["up"] @ x))


def test_a_bank_window_computes_only_its_experts(gpu):
    """A bank whose window is experts 1..2 (of 4), dispatched over 2 experts along y: only their pairs are
    written, as the dense loop gives them."""
    T, K, E = 6, 2, 4
    ids = np.array([[e % E, (e + 1) % E] for e in range(T)], np.uint32)
    y, stored, x = run_window(gpu, ids, E, 8, 6, "f32", (1, 2))
    for t in range(T):
        for j in range(K):
            e = ids[t, j]
            close(y[t * K + j], expert_ffn(stored[e], x[t]) if e in (1, 2) else np.zeros(8))


@pytest.mark.parametrize("window,ids", [((0, 7), [3, 6]), ((2, 5), [1, 5]), ((2, 5), [0, 1])])
def test_decode_dispatch_covers_the_routed_experts(gpu, window, ids):
    """One token routed to two of seven experts: the expert kernels are dispatched over min(window, pairs)
    workgroups along y, which moe_gather's active list maps to the routed experts inside the bank's window
    (none when both lie outside it)."""
    y, stored, x = run_window(gpu, np.array([ids], np.uint32), 7, 16, 8, "f16", window)
    for j, e in enumerate(ids):
        inside = window[0] <= e < window[0] + window[1]
        close(y[j], expert_ffn(stored[e], x[0]) if inside else np.zeros(16))
