// Sampler pass 1 (see sample_state.wgsl): the row's max and argmax (lowest index on ties). The argmax is the
// token at temperature 0, and the fallback of the later passes; it starts their state. One workgroup.
//!include sample_state.wgsl
@group(0) @binding(2) var<storage, read_write> token: array<u32>;
@group(0) @binding(3) var<storage, read_write> state: SampleState;

//!const LANES
var<workgroup> red_v: array<f32, LANES>;
var<workgroup> red_i: array<u32, LANES>;

@compute @workgroup_size(LANES)
fn main(@builtin(local_invocation_index) lid: u32) {
    var best = -3.4e38;
    var best_i = 0u;
    for (var i = lid; i < p.V; i += LANES) {
        let v = logits[p.row * p.V + i];
        if (v > best) { best = v; best_i = i; }
    }
    red_v[lid] = best;
    red_i[lid] = best_i;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let ov = red_v[lid + s];
            let oi = red_i[lid + s];
            if (ov > red_v[lid] || (ov == red_v[lid] && oi < red_i[lid])) { red_v[lid] = ov; red_i[lid] = oi; }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        token[0] = red_i[0];
        state = SampleState(red_v[0], red_i[0], 0.0, 1.0, 0.0, 0.0, 0u, 0u);
    }
}
