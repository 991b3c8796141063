// SwiGLU of a dense feed-forward layer: y[i] = silu(gate[i]) * up[i] over n values ([T, I] flattened).
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;
    if (i >= p.n) { return; }
    let v = gate[i];
    y[i] = v / (1.0 + exp(-v)) * up[i];
}
