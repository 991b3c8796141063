// Rows of the matrix kernels: a workgroup of LANES lanes computes ROWS output rows, as row groups or as
// lane rows (the plan's geometry picks; both for any weight format):
//   ROWS <= LANES  each row by a group of ROW_LANES = LANES / ROWS consecutive lanes that split the row's dot
//                  product between them (lanes of a group read neighbouring weights, as GPUs coalesce);
//   ROWS > LANES   each lane computes LANE_ROWS = ROWS / LANES rows alone, the workgroup's rows lid, lid + LANES,
//                  ...: every x value a lane loads serves LANE_ROWS rows (on CPU adapters the loads of x,
//                  not the weights, bound the matrix kernels).
// Lane lid's row r (r < LANE_ROWS) is the workgroup's row lid / ROW_LANES + r * LANES.
//   rows_dot(w0, wlast, x0, K, lane)   lane's share of sum_k W[row + k] * x[x0 + k], k < K, for each of its
//                                      rows: row r starts at element min(w0 + r * LANES * K, wlast) of the
//                                      including kernel's `w` (a row past the matrix repeats its last one)
//   rows_dot8(w0, wlast, xa, xb, K, lane)  the same for eight x rows at once (xa, xb: their offsets, four
//                                      each; prefill tiles): each weight decoded once for eight dot
//                                      products, the sums of row r in .lo (xa's) and .hi (xb's)
//   row_sum4(lid, v)                   v summed over lid's row group, valid in the group's first lane (v
//                                      itself with lane rows). With SUBGROUPS (the runtime defines it when the
//                                      adapter's subgroups hold at least ROW_LANES lanes) by subgroup shuffles,
//                                      else through workgroup memory with two barriers. Call it from uniform
//                                      control flow.
// With W_ALIGNED (the plan sets it when rows start on multiples of W_STEP and x offsets on multiples of 4) a
// lane reads W_STEP weights at a time (w_step) and x as vec4, else one at a time.
//!include reduce.wgsl
const ROW_LANES: u32 = max(LANES / ROWS, 1u);
const LANE_ROWS: u32 = max(ROWS / LANES, 1u);

// The eight x values from x's vec4 i on, and their dot product with eight weights (W_ALIGNED's step).
fn x8(i: u32) -> Vec8 { return Vec8(x[i], x[i + 1u]); }
fn dot8(w: Vec8, v: Vec8) -> f32 { return dot(w.lo, v.lo) + dot(w.hi, v.hi); }

fn rows_dot(w0: u32, wlast: u32, x0: u32, K: u32, lane: u32) -> array<f32, LANE_ROWS> {
    var a: array<f32, LANE_ROWS>;
//!if W_ALIGNED
    for (var k = W_STEP * lane; k < K; k += W_STEP * ROW_LANES) {
        let xv = x8((x0 + k) >> 2u);
        for (var r = 0u; r < LANE_ROWS; r++) { a[r] += dot8(w_step(min(w0 + r * LANES * K, wlast) + k), xv); }
    }
//!else
    for (var k = lane; k < K; k += ROW_LANES) {
        let xi = x0 + k;
        let xv = x[xi >> 2u][xi & 3u];
        for (var r = 0u; r < LANE_ROWS; r++) { a[r] += w_at(min(w0 + r * LANES * K, wlast) + k) * xv; }
    }
//!endif
    return a;
}

fn rows_dot8(w0: u32, wlast: u32, xa: vec4<u32>, xb: vec4<u32>, K: u32, lane: u32) -> array<Vec8, LANE_ROWS> {
    var a: array<Vec8, LANE_ROWS>;           // [row] one sum per x row: lo rows xa, hi rows xb
//!if W_ALIGNED
    for (var k = W_STEP * lane; k < K; k += W_STEP * ROW_LANES) {
        let i = (xa + vec4(k)) >> vec4(2u);
        let j = (xb + vec4(k)) >> vec4(2u);
        // eight x rows in named values, not an array (SwiftShader keeps arrays in memory)
        let x0 = x8(i.x);
        let x1 = x8(i.y);
        let x2 = x8(i.z);
        let x3 = x8(i.w);
        let x4 = x8(j.x);
        let x5 = x8(j.y);
        let x6 = x8(j.z);
        let x7 = x8(j.w);
        for (var r = 0u; r < LANE_ROWS; r++) {
            let wv = w_step(min(w0 + r * LANES * K, wlast) + k);
            a[r].lo += vec4(dot8(wv, x0), dot8(wv, x1), dot8(wv, x2), dot8(wv, x3));
            a[r].hi += vec4(dot8(wv, x4), dot8(wv, x5), dot8(wv, x6), dot8(wv, x7));
        }
    }
//!else
    for (var k = lane; k < K; k += ROW_LANES) {
        let i = xa + vec4(k);
        let j = xb + vec4(k);
        let xl = vec4(x[i.x >> 2u][i.x & 3u], x[i.y >> 2u][i.y & 3u], x[i.z >> 2u][i.z & 3u], x[i.w >> 2u][i.w & 3u]);
        let xh = vec4(x[j.x >> 2u][j.x & 3u], x[j.y >> 2u][j.y & 3u], x[j.z >> 2u][j.z & 3u], x[j.w >> 2u][j.w & 3u]);
        for (var r = 0u; r < LANE_ROWS; r++) {
            let wv = w_at(min(w0 + r * LANES * K, wlast) + k);
            a[r].lo += wv * xl;
            a[r].hi += wv * xh;
        }
    }
//!endif
    return a;
}

// Rows j .. j + 3 of a tile of n, the last repeated past n (rows_dot8's xa is tile4(j, n)'s, xb tile4(j + 4, n)'s).
fn tile4(j: u32, n: u32) -> vec4<u32> { return min(vec4(j) + vec4(0u, 1u, 2u, 3u), vec4(n - 1u)); }

// row_sum4 of both halves of rows_dot8's sums
fn row_sum8(lid: u32, v: Vec8) -> Vec8 { return Vec8(row_sum4(lid, v.lo), row_sum4(lid, v.hi)); }

fn row_sum4(lid: u32, v: vec4<f32>) -> vec4<f32> {
    if (ROW_LANES == 1u) { return v; }
//!if SUBGROUPS
    var s = v;
    for (var o = ROW_LANES / 2u; o > 0u; o = o / 2u) { s += subgroupShuffleXor(s, o); }
    return s;
//!else
    for (var c = 0u; c < 4u; c++) { red[c * LANES + lid] = v[c]; }
    workgroupBarrier();
    var s = vec4<f32>();
    if (lid % ROW_LANES == 0u) {
        for (var l = 0u; l < ROW_LANES; l++) {
            for (var c = 0u; c < 4u; c++) { s[c] += red[c * LANES + lid + l]; }
        }
    }
    workgroupBarrier();                      // before the next call writes red again
    return s;
//!endif
}
