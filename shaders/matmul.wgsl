// Linear layer for prefill and decode: y[t, n] (+)= sum_k x[t, k] * W[n, k] (+ bias[n])
//   x: [T, K] starting at row x_row0;  W: [N, K] (the Hugging Face [out, in] layout);  y: [T, N] from row y_row0
// Strides and offsets let one step read and write inside wider rows: x row t starts at
// (x_row0 + t) * x_stride + x_col0, y row t at (y_row0 + t) * y_stride + y_col0 (a row part of a split
// weight writes its columns of y; MLA writes into its latent cache rows). Dispatch z = heads: head h reads
// x h * x_hstride further, weights W[h * N ..], bias[b_off + h * N ..], and writes y h * y_hstride further.
// A workgroup computes ROWS output features for a tile of up to TOKENS tokens: its LANES lanes stride over K
// (coalesced reads of W rows), each weight is read once per tile and used for every token in it.
// accumulate = 1 adds into y (the residual stream), so no separate add kernel is needed.
struct Params { T: u32, K: u32, N: u32, x_row0: u32, x_stride: u32, x_col0: u32, x_hstride: u32, y_row0: u32,
                y_stride: u32, y_col0: u32, y_hstride: u32, b_off: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
//!if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;    // [N]
//!endif
//!include weights.wgsl
//!include reduce.wgsl

//!const ROWS
//!const TOKENS

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t0 = wg.y * TOKENS;
    if (t0 >= p.T) { return; }
    let nt = min(TOKENS, p.T - t0);
    let head = wg.z;
    let x0 = (p.x_row0 + t0) * p.x_stride + p.x_col0 + head * p.x_hstride;
    for (var r = 0u; r < ROWS; r++) {
        let n = wg.x * ROWS + r;
        if (n >= p.N) { break; }
        var acc = array<f32, TOKENS>();   // explicit: naga zeroes uninitialised locals only once per call
        let wrow = (head * p.N + n) * p.K;
        for (var k = lid; k < p.K; k += LANES) {
            let wv = w_at(wrow + k);
            for (var j = 0u; j < nt; j++) {
                acc[j] += wv * x[x0 + j * p.x_stride + k];
            }
        }
        for (var j = 0u; j < nt; j++) { red[j * LANES + lid] = acc[j]; }
        reduce_lanes(lid, nt);
        if (lid < nt) {
            let i = (p.y_row0 + t0 + lid) * p.y_stride + p.y_col0 + head * p.y_hstride + n;
            var v = red[lid * LANES];
//!if BIAS
            v += bias[p.b_off + head * p.N + n];
//!endif
            if (p.accumulate != 0u) { v += y[i]; }
            y[i] = v;
        }
        workgroupBarrier();
    }
}
