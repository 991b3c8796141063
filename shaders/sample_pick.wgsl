// Sampler pass 4: the token where the kept mass, summed in index order, first passes u * kept (u in [0, 1)
// from the host's seeded generator). One invocation walks the chunk sums, then the one chunk holding the
// goal; sample_max's argmax stays the token if rounding leaves the goal past the last kept token.
//!include sample_state.wgsl
@group(0) @binding(2) var<storage, read> state: SampleState;
@group(0) @binding(3) var<storage, read> chunk_mass: array<f32>;
@group(0) @binding(4) var<storage, read_write> token: array<u32>;

//!const CHUNKS

@compute @workgroup_size(1)
fn main() {
    if (p.temperature <= 0.0) { return; }
    let goal = p.u * state.kept;
    let chunk = (p.V + CHUNKS - 1u) / CHUNKS;
    var before = 0.0;
    for (var c = 0u; c < CHUNKS; c++) {
        let own = chunk_mass[c];
        if (goal >= before && goal < before + own) {
            var run = before;
            for (var i = min(c * chunk, p.V); i < min(c * chunk + chunk, p.V); i++) {
                let q = q_at(i, state.mx);
                if (q >= state.lo) {
                    run += q;
                    if (goal < run) { token[0] = i; return; }
                }
            }
            return;
        }
        before += own;
    }
}
