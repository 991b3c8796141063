"""The MoE kernels against numpy (see test_kernels.py): every router scoring and strategy, the sort of the
pairs by expert (on its own and fused into the router), the grouped expert FFN over the slab's banks and
the scatter back."""
import numpy as np
import pytest

from kernel_checks import QUANTISED, close, rand, rng
from kernel_runner import as_stored, run_plan
from webmoe.converter.plan import CPU_GEOMETRY


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
    ("f16", True, {"moe_gate_up": {"ROWS": 2, "TILE": 5, "LANES": 32}, "moe_down": {"ROWS": 16, "TILE": 3, "LANES": 64}}, 1 << 27,
     None),
    # experts cut into pieces along I (slots of at most 3 KiB): the pieces' outputs add up
    ("f32", True, None, 3072, None), ("f16", False, None, 2048, None),
    # block formats: parts starting on block boundaries inside the slot, f32 biases between them, pieces
    ("q8", False, None, 1 << 27, None), ("q8", True, None, 1 << 27, None), ("q4", False, None, 1 << 27, None),
    ("q4", True, None, 1 << 27, None), ("mxfp4", True, None, 1 << 27, None), ("mxfp4", False, None, 1 << 27, None),
    ("q8", True, None, 3072, None), ("q4", False, None, 1400, None), ("mxfp4", True, None, 3500, None),
    # H and I multiples of 8: eight weights at a time (VEC8) in both kernels, for every format and in pieces
    *((q, True, None, 1 << 27, (64, 96)) for q in ("f32", "f16", *QUANTISED)),
    ("f16", False, {"moe_gate_up": {"ROWS": 2, "TILE": 5, "LANES": 32}, "moe_down": {"ROWS": 16, "TILE": 3, "LANES": 64}}, 1 << 27,
     (64, 96)),
    ("q8", False, None, 8192, (64, 96)),
    # the plan's cpu variant: 16 rows per lane in both kernels
    ("q4", True, CPU_GEOMETRY, 1 << 27, (64, 96)), ("f16", False, CPU_GEOMETRY, 1 << 27, None),
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
