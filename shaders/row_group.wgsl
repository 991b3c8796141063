// Row groups of the matrix kernels: a workgroup of LANES lanes computes ROWS output rows, each by a group
// of ROW_LANES = LANES / ROWS consecutive lanes that split the row's dot product between them.
//   row_dot(wrow, x0, K, lane)   lane's share of sum_k W[wrow + k] * x[x0 + k], k < K (elements of the
//                                including kernel's `w` and `x`): with W_ALIGNED W_STEP weights at a time
//                                (w_step, x read as vec4: the plan sets W_ALIGNED when rows start on
//                                multiples of W_STEP and x offsets on multiples of 4), else one at a time
//   row_dot4(wrow, x0, K, lane)  the same for four x rows at once (x0: vec4 of offsets)
//   row_sums(lid, &acc, n)      adds acc[0 .. n] over lid's group; the sums are valid in the group's first
//                                lane. With SUBGROUPS (the runtime defines it when the adapter's subgroups
//                                hold at least ROW_LANES lanes) by subgroup shuffles, else through
//                                workgroup memory with one barrier. Call it from uniform control flow.
//!include reduce.wgsl
const ROW_LANES: u32 = LANES / ROWS;

fn row_dot(wrow: u32, x0: u32, K: u32, lane: u32) -> f32 {
//!if W_ALIGNED
    var a = vec4<f32>();
    for (var k = W_STEP * lane; k < K; k += W_STEP * ROW_LANES) {
        let ws = w_step(wrow + k);
        for (var c = 0u; c < W_STEP / 8u; c++) {
            let xi = (x0 + k + 8u * c) >> 2u;
            a += ws[c].lo * x[xi] + ws[c].hi * x[xi + 1u];
        }
    }
    return a.x + a.y + a.z + a.w;
//!else
    var a = 0.0;
    for (var k = lane; k < K; k += ROW_LANES) {
        let xi = x0 + k;
        a += w_at(wrow + k) * x[xi >> 2u][xi & 3u];
    }
    return a;
//!endif
}

// Four dot products of one weight row with the x rows starting at x0.x .. x0.w (prefill tiles): each
// weight decoded once for all four. A caller with fewer rows repeats one and ignores its sums.
fn row_dot4(wrow: u32, x0: vec4<u32>, K: u32, lane: u32) -> vec4<f32> {
//!if W_ALIGNED
    var a = vec4<f32>();                     // one sum per x row
    for (var k = W_STEP * lane; k < K; k += W_STEP * ROW_LANES) {
        let ws = w_step(wrow + k);
        for (var c = 0u; c < W_STEP / 8u; c++) {
            let wv = ws[c];
            let i = (x0 + vec4(k + 8u * c)) >> vec4(2u);
            a += vec4(dot(wv.lo, x[i.x]) + dot(wv.hi, x[i.x + 1u]), dot(wv.lo, x[i.y]) + dot(wv.hi, x[i.y + 1u]),
                      dot(wv.lo, x[i.z]) + dot(wv.hi, x[i.z + 1u]), dot(wv.lo, x[i.w]) + dot(wv.hi, x[i.w + 1u]));
        }
    }
    return a;
//!else
    var a = vec4<f32>();
    for (var k = lane; k < K; k += ROW_LANES) {
        let i = x0 + vec4(k);
        a += w_at(wrow + k) * vec4(x[i.x >> 2u][i.x & 3u], x[i.y >> 2u][i.y & 3u], x[i.z >> 2u][i.z & 3u],
                                   x[i.w >> 2u][i.w & 3u]);
    }
    return a;
//!endif
}

fn row_sums(lid: u32, acc: ptr<function, array<f32, RED_VALUES>>, n: u32) {
//!if SUBGROUPS
    for (var v = 0u; v < n; v++) {
        var s = (*acc)[v];
        for (var o = ROW_LANES / 2u; o > 0u; o = o / 2u) { s += subgroupShuffleXor(s, o); }
        (*acc)[v] = s;
    }
//!else
    for (var v = 0u; v < n; v++) { red[v * LANES + lid] = (*acc)[v]; }
    workgroupBarrier();
    if (lid % ROW_LANES == 0u) {
        for (var v = 0u; v < n; v++) {
            var s = 0.0;
            for (var l = 0u; l < ROW_LANES; l++) { s += red[v * LANES + lid + l]; }
            (*acc)[v] = s;
        }
    }
//!endif
}
