// Sampler pass 3: the kept mass (q_i >= lo, the threshold sample_mass found) of each of CHUNKS contiguous
// chunks of the row, one lane per chunk, for sample_pick's prefix. One workgroup, no barriers.
//!include sample_state.wgsl
@group(0) @binding(2) var<storage, read> state: SampleState;
@group(0) @binding(3) var<storage, read_write> chunk_mass: array<f32>;

//!const CHUNKS

@compute @workgroup_size(CHUNKS)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (p.temperature <= 0.0) { return; }
    let chunk = (p.V + CHUNKS - 1u) / CHUNKS;
    let begin = min(lid * chunk, p.V);
    let end = min(begin + chunk, p.V);
    var own = 0.0;
    for (var i = begin; i < end; i++) {
        let q = q_at(i, state.mx);
        if (q >= state.lo) { own += q; }
    }
    chunk_mass[lid] = own;
}
