// Weighted combination of the expert outputs back into the residual stream:
//   y[t, h] += sum_j topk_w[t, j] * expert_out[t * K + j, h]        expert_out: [T * K, H]
// The j order is fixed, so the sum is deterministic.
struct Params { T: u32, K: u32, H: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> expert_out: array<f32>;
@group(0) @binding(2) var<storage, read> topk_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let h = g.x;
    let t = g.y;
    if (h >= p.H || t >= p.T) { return; }
    var acc = 0.0;
    for (var j = 0u; j < p.K; j++) {
        let pair = t * p.K + j;
        acc += topk_w[pair] * expert_out[pair * p.H + h];
    }
    y[t * p.H + h] += acc;
}
