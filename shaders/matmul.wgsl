// Linear layer for prefill and decode: y[t, n] (+)= sum_k x[t, k] * W[n, k] (+ bias[n])
//   x: [T, K] starting at row x_row0;  W: [N, K] (the Hugging Face [out, in] layout);  y: [T, N] from row y_row0
// Strides and offsets let one step read and write inside wider rows: x row t starts at
// (x_row0 + t) * x_stride + x_col0, y row t at (y_row0 + t) * y_stride + y_col0 (a row part of a split
// weight writes its columns of y; MLA writes into its latent cache rows). Dispatch z = heads: head h reads
// x h * x_hstride further, weights W[h * N ..], bias[b_off + h * N ..], and writes y h * y_hstride further.
// A workgroup computes ROWS output features (row groups or lane rows, row_group.wgsl) for a tile of up to
// TOKENS tokens, eight tokens at a time (one when decoding).
// accumulate = 1 adds into y (the residual stream), so no separate add kernel is needed.
// SPLIT_Y: the output's columns go to three buffers, split1 columns to y, the next split2 to y2, the last
// split3 to y3, each with rows as wide as its columns (q, k and v from one joined weight: one step, not
// three); y_stride and accumulate do not apply.
struct Params { T: u32, K: u32, N: u32, x_row0: u32, x_stride: u32, x_col0: u32, x_hstride: u32, y_row0: u32,
                y_stride: u32, y_col0: u32, y_hstride: u32, b_off: u32, accumulate: u32,
//!if SPLIT_Y
                split1: u32, split2: u32, split3: u32,
//!endif
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<WeightWord>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
//!if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;    // [N]
//!endif
//!if SPLIT_Y
@group(0) @binding(5) var<storage, read_write> y2: array<f32>;
@group(0) @binding(6) var<storage, read_write> y3: array<f32>;
//!endif
//!include weights.wgsl
//!include row_group.wgsl

//!const ROWS
//!const TOKENS

// y[t, n] = v for token t of the call (row y_row0 + t), feature n of this head: the bias added, into the
// split buffers or the residual stream
fn store(t: u32, head: u32, n: u32, value: f32) {
    let r = p.y_row0 + t;
    let c = p.y_col0 + head * p.y_hstride + n;     // column of the output
    var v = value;
//!if BIAS
    v += bias[p.b_off + head * p.N + n];
//!endif
//!if SPLIT_Y
    if (c < p.split1) {
        y[r * p.split1 + c] = v;
    } else if (c < p.split1 + p.split2) {
        y2[r * p.split2 + c - p.split1] = v;
    } else {
        y3[r * p.split3 + c - p.split1 - p.split2] = v;
    }
//!else
    let i = r * p.y_stride + c;
    if (p.accumulate != 0u) { v += y[i]; }
    y[i] = v;
//!endif
}

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t0 = wg.y * TOKENS;
    if (t0 >= p.T) { return; }
    let nt = min(TOKENS, p.T - t0);
    let head = wg.z;
    let n0 = wg.x * ROWS + lid / ROW_LANES;          // the lane's first row; its others LANES apart
    let lane = lid % ROW_LANES;
    let x0 = (p.x_row0 + t0) * p.x_stride + p.x_col0 + head * p.x_hstride;
    let wlast = (head * p.N + p.N - 1u) * p.K;       // the head's last row
    let w0 = min((head * p.N + n0) * p.K, wlast);
    if (nt == 1u) {
        let a = rows_dot(w0, wlast, x0, p.K, lane);
        for (var r = 0u; r < LANE_ROWS; r++) {
            let v = row_sum4(lid, vec4(a[r], 0.0, 0.0, 0.0)).x;
            let n = n0 + r * LANES;
            if (lane == 0u && n < p.N) { store(t0, head, n, v); }
        }
        return;
    }
    for (var j = 0u; j < nt; j += 8u) {              // eight tokens per pass over the rows
        let a = rows_dot8(w0, wlast, vec4(x0) + tile4(j, nt) * p.x_stride, vec4(x0) + tile4(j + 4u, nt) * p.x_stride,
                          p.K, lane);
        for (var r = 0u; r < LANE_ROWS; r++) {
            let s = row_sum8(lid, a[r]);
            let n = n0 + r * LANES;
            if (lane == 0u && n < p.N) {
                for (var c = 0u; c < 4u; c++) {
                    if (j + c < nt) { store(t0 + j + c, head, n, s.lo[c]); }
                    if (j + 4u + c < nt) { store(t0 + j + 4u + c, head, n, s.hi[c]); }
                }
            }
        }
    }
}
