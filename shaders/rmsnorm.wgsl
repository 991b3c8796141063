// RMSNorm over rows of length H: y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight
// for rows row0 .. row0 + rows, `stride` values apart (H, or more for the latent part of MLA's cache rows),
// one workgroup per row. With IN_PLACE the rows are normalised in `y`
// itself: QK-norm on q, or on the K cache rows just written (row0 from the position).
// LAYERNORM makes it LayerNorm with bias: (x - mean) / sqrt(var + eps) * weight + bias (PhiMoE).
struct Params { rows: u32, row0: u32, H: u32, stride: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weight: array<f32>;  // [H]
@group(0) @binding(2) var<storage, read_write> y: array<f32>; // [rows, stride]
//!if !IN_PLACE
@group(0) @binding(3) var<storage, read> x: array<f32>;       // [rows, stride]
//!endif
//!if LAYERNORM
@group(0) @binding(4) var<storage, read> bias: array<f32>;    // [H]
//!endif
//!include reduce.wgsl

fn x_at(i: u32) -> f32 {
//!if IN_PLACE
    return y[i];
//!else
    return x[i];
//!endif
}

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (wg.x >= p.rows) { return; }
    let base = (p.row0 + wg.x) * p.stride;
    var mean = 0.0;
//!if LAYERNORM
    var s = 0.0;
    for (var i = lid; i < p.H; i += LANES) { s += x_at(base + i); }
    red[lid] = s;
    reduce_lanes(lid, 1u);
    mean = red[0] / f32(p.H);
    workgroupBarrier();
//!endif
    var ss = 0.0;
    for (var i = lid; i < p.H; i += LANES) {
        let v = x_at(base + i) - mean;
        ss += v * v;
    }
    red[lid] = ss;
    reduce_lanes(lid, 1u);
    let inv = inverseSqrt(red[0] / f32(p.H) + p.eps);
    for (var i = lid; i < p.H; i += LANES) {
        var v = (x_at(base + i) - mean) * inv * weight[i];
//!if LAYERNORM
        v += bias[i];
//!endif
        y[base + i] = v;
    }
}
