// Expert FFN, first half: act[p, i] = silu(x[t] . gate[i]) * (x[t] . up[i]) for each pair p = (t, j)
// routed to expert e.    x: [T, H]   gate, up: [I, H] inside the expert's slot   act: [pairs, I]
// I is this piece's share of the expert's intermediate dimension (all of it when pieces = 1).
// Dispatch: [ceil(I / ROWS), bank_experts, ceil(T / TILE)].
// EXPERT_BIAS adds f32 biases stored in the slot (word offsets gate_bias_off, up_bias_off).
// CLAMPED_SWIGLU is GPT-OSS's activation: g = min(g, limit), u = clamp(u, -limit, limit),
// act = (u + 1) * g * sigmoid(alpha * g).
struct Params { layer: u32, E: u32, K: u32, H: u32, I: u32, pieces: u32, piece: u32, slot_elems: u32,
                gate_off: u32, up_off: u32, gate_bias_off: u32, up_bias_off: u32, alpha: f32, limit: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;              // one bank of the expert slab
@group(0) @binding(3) var<storage, read> slots: array<u32>;          // [layers, E, pieces] -> slot
@group(0) @binding(4) var<storage, read> expert_offsets: array<u32>; // [E + 1]
@group(0) @binding(5) var<storage, read> pair_order: array<u32>;     // [pairs]
@group(0) @binding(6) var<storage, read_write> act: array<f32>;      // [pairs, I]
@group(0) @binding(7) var<uniform> bank: vec4<u32>;                // first slot, slots, first expert, experts
//!include weights.wgsl
//!include reduce.wgsl
//!include moe_tile.wgsl

//!const ROWS

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = load_tile(lid, wg.y, wg.z);
    if (n == 0u) { return; }
    let base = workgroupUniformLoad(&tile_base);
    for (var r = 0u; r < ROWS; r++) {
        let i = wg.x * ROWS + r;
        if (i >= p.I) { break; }
        var g = array<f32, TILE>();   // explicit: naga zeroes uninitialised locals only once per call
        var u = array<f32, TILE>();
        let gate_row = base + p.gate_off + i * p.H;
        let up_row = base + p.up_off + i * p.H;
        for (var h = lid; h < p.H; h += LANES) {
            let wg_ = w_at(gate_row + h);
            let wu = w_at(up_row + h);
            for (var j = 0u; j < n; j++) {
                let xv = x[(tile_pair[j] / p.K) * p.H + h];
                g[j] += wg_ * xv;
                u[j] += wu * xv;
            }
        }
        for (var j = 0u; j < n; j++) {
            red[j * LANES + lid] = g[j];
            red[(j + n) * LANES + lid] = u[j];
        }
        reduce_lanes(lid, 2u * n);
        if (lid < n) {
            var gv = red[lid * LANES];
            var uv = red[(lid + n) * LANES];
//!if EXPERT_BIAS
            gv += bias_at(base, p.gate_bias_off + i);
            uv += bias_at(base, p.up_bias_off + i);
//!endif
//!if CLAMPED_SWIGLU
            gv = min(gv, p.limit);
            uv = clamp(uv, -p.limit, p.limit);
            act[tile_pair[lid] * p.I + i] = (uv + 1.0) * gv / (1.0 + exp(-p.alpha * gv));
//!else
            act[tile_pair[lid] * p.I + i] = gv / (1.0 + exp(-gv)) * uv;
//!endif
        }
        workgroupBarrier();
    }
}
