"""Every kernel in shaders/ against a numpy reference, with sizes that are not powers of two: here the dense
ones (embedding, norms, SwiGLU, matmul); test_kernels_attention.py (rotary, attention, the KV stores),
test_kernels_moe.py (routers, the expert sort and the grouped experts) and test_kernels_sampling.py (the
sampler) the rest. Kernels run as the plan builder states them (kernel_runner.run_plan): the same steps,
geometry and dispatch a package holds."""
import numpy as np
import pytest

from kernel_checks import QUANTISED, close, rand
from kernel_runner import as_stored, run_plan
from webmoe.converter.plan import CPU_GEOMETRY


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
    # the plan's cpu variant (16 rows per lane) and one row per lane
    *((d, T, 136, 300, True, True, {"matmul": CPU_GEOMETRY["matmul"]}, 1 << 27) for d in ("f16", "q4") for T in (1, 13)),
    ("q8", 13, 136, 29, True, False, {"matmul": {"ROWS": 64, "LANES": 64}}, 1 << 27),
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
