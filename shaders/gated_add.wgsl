// A gated shared expert (Qwen2-MoE): y[t, :] += sigmoid(gate_logit[t]) * x[t, :]
//   gate_logit: [T, 1]   x, y: [T, H]
struct Params { T: u32, H: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate_logit: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let h = g.x;
    let t = g.y;
    if (h >= p.H || t >= p.T) { return; }
    y[t * p.H + h] += x[t * p.H + h] / (1.0 + exp(-gate_logit[t]));
}
