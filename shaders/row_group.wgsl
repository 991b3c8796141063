// Row groups of the matrix kernels: a workgroup of LANES lanes computes ROWS output rows, each by a group
// of ROW_LANES = LANES / ROWS consecutive lanes that split the row's dot product between them.
//   row_dot(wrow, x0, K, lane)   lane's share of sum_k W[wrow + k] * x[x0 + k], k < K (elements of the
//                                including kernel's `w` and `x`): with VEC8 eight weights at a time (w8, x
//                                read as vec4: the plan sets VEC8 when rows start on multiples of 8
//                                elements and x offsets on multiples of 4), else one at a time
//   row_sums(lid, &acc, n)      adds acc[0 .. n] over lid's group; the sums are valid in the group's first
//                                lane. With SUBGROUPS (the runtime defines it when the adapter's subgroups
//                                hold at least ROW_LANES lanes) by subgroup shuffles, else through
//                                workgroup memory with one barrier. Call it from uniform control flow.
//!include reduce.wgsl
const ROW_LANES: u32 = LANES / ROWS;

fn row_dot(wrow: u32, x0: u32, K: u32, lane: u32) -> f32 {
//!if VEC8
    var a = vec4<f32>();
    for (var k = 8u * lane; k < K; k += 8u * ROW_LANES) {
        let wv = w8(wrow + k);
        let xi = (x0 + k) >> 2u;
        a += wv.lo * x[xi] + wv.hi * x[xi + 1u];
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
