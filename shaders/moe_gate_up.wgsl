// Expert FFN, first half: act[p, i] = silu(x[t] . gate[i]) * (x[t] . up[i]) for each pair p = (t, j)
// routed to expert e.    x: [T, H]   gate, up: [I, H] inside the expert's slot   act: [pairs, I]
// I is this piece's share of the expert's intermediate dimension (all of it when pieces = 1).
// Dispatch: [ceil(I / ROWS), min(bank_experts, T * K), ceil(T / TILE)]. ROWS rows per workgroup by row groups or
// lane rows (row_group.wgsl; W_ALIGNED: H a multiple of W_STEP), eight pairs at a time (one when decoding).
// EXPERT_BIAS adds f32 biases stored in the slot (word offsets gate_bias_off, up_bias_off).
// CLAMPED_SWIGLU is GPT-OSS's activation: g = min(g, limit), u = clamp(u, -limit, limit),
// act = (u + 1) * g * sigmoid(alpha * g).
struct Params { layer: u32, E: u32, K: u32, H: u32, I: u32, pieces: u32, piece: u32, slot_elems: u32,
                gate_off: u32, up_off: u32, gate_bias_off: u32, up_bias_off: u32, alpha: f32, limit: f32 }
@group(0) @binding(0) var<uniform> p: Params;
//!include moe_expert.wgsl
@group(0) @binding(6) var<storage, read_write> act: array<f32>;      // [pairs, I]

//!const ROWS

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = load_tile(lid, wg.y, wg.z);
    if (n == 0u) { return; }
    let base = workgroupUniformLoad(&tile_base);
    let i0 = wg.x * ROWS + lid / ROW_LANES;          // the lane's first row; its others LANES apart
    let lane = lid % ROW_LANES;
    let last = (p.I - 1u) * p.H;                     // the last row of gate (of up, up_off further)
    let row0 = min(i0 * p.H, last);
    for (var j = 0u; j < n; j += 8u) {               // eight pairs per pass over the rows (one when decoding)
        let qa = tile4(j, n);
        let qb = tile4(j + 4u, n);
        var g: array<Vec8, LANE_ROWS>;
        var u: array<Vec8, LANE_ROWS>;
        if (n == 1u) {
            let x0 = (tile_pair[0] / p.K) * p.H;
            let g1 = rows_dot(base + p.gate_off + row0, base + p.gate_off + last, x0, p.H, lane);
            let u1 = rows_dot(base + p.up_off + row0, base + p.up_off + last, x0, p.H, lane);
            for (var r = 0u; r < LANE_ROWS; r++) {
                g[r].lo.x = g1[r];
                u[r].lo.x = u1[r];
            }
        } else {
            let xa = vec4(tile_pair[qa.x], tile_pair[qa.y], tile_pair[qa.z], tile_pair[qa.w]) / p.K * p.H;
            let xb = vec4(tile_pair[qb.x], tile_pair[qb.y], tile_pair[qb.z], tile_pair[qb.w]) / p.K * p.H;
            g = rows_dot8(base + p.gate_off + row0, base + p.gate_off + last, xa, xb, p.H, lane);
            u = rows_dot8(base + p.up_off + row0, base + p.up_off + last, xa, xb, p.H, lane);
        }
        for (var r = 0u; r < LANE_ROWS; r++) {
            let gs = row_sum8(lid, g[r]);
            let us = row_sum8(lid, u[r]);
            let i = i0 + r * LANES;
            if (lane == 0u && i < p.I) {
                for (var c = 0u; c < 8u; c++) {
                    if (j + c < n) {
                        act[tile_pair[j + c] * p.I + i] = activation(base, i, vec8_at(gs, c), vec8_at(us, c));
                    }
                }
            }
        }
    }
}

// the activation of row i's gate and up values (biases added)
fn activation(base: u32, i: u32, gate: f32, up: f32) -> f32 {
    var gv = gate;
    var uv = up;
//!if EXPERT_BIAS
    gv += bias_at(base, p.gate_bias_off + i);
    uv += bias_at(base, p.up_bias_off + i);
//!endif
//!if CLAMPED_SWIGLU
    gv = min(gv, p.limit);
    uv = clamp(uv, -p.limit, p.limit);
    return (uv + 1.0) * gv / (1.0 + exp(-p.alpha * gv));
//!else
    return gv / (1.0 + exp(-gv)) * uv;
//!endif
}
