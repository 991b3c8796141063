// Embedding lookup: y[t, :] = W[ids[t], :]          W: [V, H]
struct Params { T: u32, H: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;     // [T]
@group(0) @binding(2) var<storage, read> w: array<u32>;       // [V, H]
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // [T, H]
//!include weights.wgsl

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let h = g.x;
    let t = g.y;
    if (h >= p.H || t >= p.T) { return; }
    y[t * p.H + h] = w_at(ids[t] * p.H + h);
}
