// RMSNorm over rows of length H: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
// One workgroup per row. With IN_PLACE the row is normalised in `y` itself (used for per-head QK-norm,
// where rows are heads: [T * n_heads, head_dim]).
struct Params { rows: u32, H: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weight: array<f32>;  // [H]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [rows, H]
//!if !IN_PLACE
@group(0) @binding(3) var<storage, read> x: array<f32>;       // [rows, H]
//!endif
//!include reduce.wgsl

fn x_at(i: u32) -> f32 {
//!if IN_PLACE
    return y[i];
//!else
    return x[i];
//!endif
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.x;
    if (r >= p.rows) { return; }
    let base = r * p.H;
    var ss = 0.0;
    for (var i = lid; i < p.H; i += LANES) {
        let v = x_at(base + i);
        ss += v * v;
    }
    red[lid] = ss;
    reduce_lanes(lid, 1u);
    let inv = inverseSqrt(red[0] / f32(p.H) + p.eps);
    for (var i = lid; i < p.H; i += LANES) {
        y[base + i] = x_at(base + i) * inv * weight[i];
    }
}
