// Expert FFN, second half: y[p, h] = act[p] . down[h] for each pair p routed to expert e.
//   x = act: [pairs, I]   down: [H, I] inside the expert's slot   y: [pairs, H]
// Dispatch: [ceil(H / ROWS), min(bank_experts, T * K), ceil(T / TILE)]. Rows by row groups or lane rows as in moe_gate_up
// (W_ALIGNED: I a multiple of W_STEP). EXPERT_BIAS adds the f32 bias at word down_bias_off.
// accumulate = 1 adds into y: the expert's later pieces (slices of its intermediate dimension).
struct Params { layer: u32, E: u32, K: u32, H: u32, I: u32, pieces: u32, piece: u32, slot_elems: u32,
                down_off: u32, down_bias_off: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
//!include moe_expert.wgsl
@group(0) @binding(6) var<storage, read_write> y: array<f32>;        // [pairs, H]

//!const ROWS

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = load_tile(lid, wg.y, wg.z);
    if (n == 0u) { return; }
    let base = workgroupUniformLoad(&tile_base);
    let h0 = wg.x * ROWS + lid / ROW_LANES;          // the lane's first row; its others LANES apart
    let lane = lid % ROW_LANES;
    let last = base + p.down_off + (p.H - 1u) * p.I;
    let row0 = min(base + p.down_off + h0 * p.I, last);
    for (var j = 0u; j < n; j += 8u) {               // eight pairs per pass over the rows (one when decoding)
        let qa = tile4(j, n);
        let qb = tile4(j + 4u, n);
        var d: array<Vec8, LANE_ROWS>;
        if (n == 1u) {
            let d1 = rows_dot(row0, last, tile_pair[0] * p.I, p.I, lane);
            for (var r = 0u; r < LANE_ROWS; r++) { d[r].lo.x = d1[r]; }
        } else {
            d = rows_dot8(row0, last, vec4(tile_pair[qa.x], tile_pair[qa.y], tile_pair[qa.z], tile_pair[qa.w]) * p.I,
                          vec4(tile_pair[qb.x], tile_pair[qb.y], tile_pair[qb.z], tile_pair[qb.w]) * p.I, p.I, lane);
        }
        for (var r = 0u; r < LANE_ROWS; r++) {
            let s = row_sum8(lid, d[r]);
            let h = h0 + r * LANES;
            if (lane == 0u && h < p.H) {
                for (var c = 0u; c < 8u; c++) {
                    if (j + c < n) {
                        var v = vec8_at(s, c);
//!if EXPERT_BIAS
                        v += bias_at(base, p.down_bias_off + h);
//!endif
                        let o = tile_pair[j + c] * p.H + h;
                        if (p.accumulate != 0u) { v += y[o]; }
                        y[o] = v;
                    }
                }
            }
        }
    }
}
