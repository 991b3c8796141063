// Expert FFN, first half: act[p, i] = silu(x[t] . gate[i]) * (x[t] . up[i]) for each pair p = (t, j)
// routed to expert e.    x: [T, H]   gate, up: [I, H] inside the expert's slot   act: [pairs, I]
// I is this piece's share of the expert's intermediate dimension (all of it when pieces = 1).
// Dispatch: [ceil(I / ROWS), min(bank_experts, T * K), ceil(T / TILE)]. Each of the ROWS rows is computed by a row
// group of lanes (row_group.wgsl; W_ALIGNED: H a multiple of W_STEP), four pairs at a time.
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
    let i = wg.x * ROWS + lid / ROW_LANES;
    let lane = lid % ROW_LANES;
    var acc = array<f32, RED_VALUES>();   // gate of pair j at j, up at n + j; explicit: naga zeroes once
    if (i < p.I) {
        let gate_row = base + p.gate_off + i * p.H;
        let up_row = base + p.up_off + i * p.H;
        if (n == 1u) {
            let x0 = (tile_pair[0] / p.K) * p.H;
            acc[0] = row_dot(gate_row, x0, p.H, lane);
            acc[1] = row_dot(up_row, x0, p.H, lane);
        }
        for (var j = 0u; j < n && n > 1u; j += 4u) {          // four pairs per pass over the rows
            let q = min(vec4(j) + vec4(0u, 1u, 2u, 3u), vec4(n - 1u));
            let x0 = vec4(tile_pair[q.x], tile_pair[q.y], tile_pair[q.z], tile_pair[q.w]) / p.K * p.H;
            let g = row_dot4(gate_row, x0, p.H, lane);
            let u = row_dot4(up_row, x0, p.H, lane);
            for (var c = 0u; c < 4u; c++) {
                if (j + c < n) {
                    acc[j + c] = g[c];
                    acc[n + j + c] = u[c];
                }
            }
        }
    }
    row_sums(lid, &acc, 2u * n);
    if (lane == 0u && i < p.I) {
        for (var j = 0u; j < n; j++) {
            var gv = acc[j];
            var uv = acc[n + j];
//!if EXPERT_BIAS
            gv += bias_at(base, p.gate_bias_off + i);
            uv += bias_at(base, p.up_bias_off + i);
//!endif
//!if CLAMPED_SWIGLU
            gv = min(gv, p.limit);
            uv = clamp(uv, -p.limit, p.limit);
            act[tile_pair[j] * p.I + i] = (uv + 1.0) * gv / (1.0 + exp(-p.alpha * gv));
//!else
            act[tile_pair[j] * p.I + i] = gv / (1.0 + exp(-gv)) * uv;
//!endif
        }
    }
}
