// What the two expert kernels (moe_gate_up.wgsl, moe_down.wgsl) share: their bindings but the first (each
// kernel's own Params) and the seventh (its output), and the code they include. Included right after the
// kernel's Params binding.
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;          // gate_up: x [T, H]; down: act [pairs, I]
@group(0) @binding(2) var<storage, read> w: array<WeightWord>;        // one bank of the expert slab
@group(0) @binding(3) var<storage, read> slots: array<u32>;          // [layers, E, pieces] -> slot
@group(0) @binding(4) var<storage, read> expert_offsets: array<u32>; // [E + 1]
@group(0) @binding(5) var<storage, read> pair_order: array<u32>;     // [pairs]
@group(0) @binding(7) var<uniform> bank: vec4<u32>;                // first slot, slots, first expert, experts
@group(0) @binding(8) var<storage, read> active_experts: array<u32>; // [E + 1 + E] (moe_gather)
//!include weights.wgsl
//!include row_group.wgsl
//!include moe_tile.wgsl
