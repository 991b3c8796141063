// Embedding lookup: y[t, :] = W[ids[t], :]          W: [V, H]
// W may be one row part of a split embedding (rows row0 .. row0 + rows): a token whose id lies outside it
// is written by the step of another part.
struct Params { T: u32, H: u32, row0: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;     // [T]
@group(0) @binding(2) var<storage, read> w: array<WeightWord>; // [V, H]
@group(0) @binding(3) var<storage, read_write> y: array<f32>; // [T, H]
//!include weights.wgsl

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let h = g.x;
    let t = g.y;
    if (h >= p.H || t >= p.T) { return; }
    let row = ids[t] - p.row0;          // wraps around below row0
    if (row >= p.rows) { return; }
    y[t * p.H + h] = w_at(row * p.H + h);
}
