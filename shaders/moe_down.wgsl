// Expert FFN, second half: y[p, h] = act[p] . down[h] for each pair p routed to expert e.
//   act: [pairs, I]   down: [H, I] inside the expert's slot   y: [pairs, H]
// Dispatch: [ceil(H / ROWS), bank_experts, ceil(T / TILE)]. EXPERT_BIAS adds the f32 bias at word down_bias_off.
// accumulate = 1 adds into y: the expert's later pieces (slices of its intermediate dimension).
struct Params { layer: u32, E: u32, K: u32, H: u32, I: u32, pieces: u32, piece: u32, slot_elems: u32,
                down_off: u32, down_bias_off: u32, accumulate: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> act: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;              // one bank of the expert slab
@group(0) @binding(3) var<storage, read> slots: array<u32>;          // [layers, E, pieces] -> slot
@group(0) @binding(4) var<storage, read> expert_offsets: array<u32>; // [E + 1]
@group(0) @binding(5) var<storage, read> pair_order: array<u32>;     // [pairs]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;        // [pairs, H]
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
        let h = wg.x * ROWS + r;
        if (h >= p.H) { break; }
        var acc = array<f32, TILE>();   // explicit: naga zeroes uninitialised locals only once per call
        let down_row = base + p.down_off + h * p.I;
        for (var i = lid; i < p.I; i += LANES) {
            let wv = w_at(down_row + i);
            for (var j = 0u; j < n; j++) { acc[j] += wv * act[tile_pair[j] * p.I + i]; }
        }
        for (var j = 0u; j < n; j++) { red[j * LANES + lid] = acc[j]; }
        reduce_lanes(lid, n);
        if (lid < n) {
            var v = red[lid * LANES];
//!if EXPERT_BIAS
            v += bias_at(base, p.down_bias_off + h);
//!endif
            let o = tile_pair[lid] * p.H + h;
            if (p.accumulate != 0u) { v += y[o]; }
            y[o] = v;
        }
        workgroupBarrier();
    }
}
