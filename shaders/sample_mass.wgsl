// Sampler pass 2: kept masses (sum of the q_i >= tau) over the whole row. With TOTAL, once: tau = 0, the
// total. Without, dispatched once per bisection step: tau is the midpoint of [lo, hi], the interval holding
// the nucleus threshold, which becomes its upper or lower half, so that lo ends as the largest tau whose
// kept mass is at least top_p of the total (no sort). Nothing to do at temperature 0, nor for the
// bisection when top_p >= 1. One workgroup, one reduction.
// Lavapipe (Mesa 22.3.6) leaks host memory on every dispatch of some kernels that loop over exp before a
// barrier, depending on the shape of the code (docs/upstream.md): about 5 KiB per dispatch of this kernel
// when the loop's bound was `n` itself, or its guard a bool, or it followed an early return. This shape
// leaks nothing; tests/test_memory.py watches it.
//!include sample_state.wgsl
@group(0) @binding(2) var<storage, read_write> state: SampleState;
//!include reduce.wgsl

@compute @workgroup_size(LANES)
fn main(@builtin(local_invocation_index) lid: u32) {
//!if TOTAL
    let tau = 0.0;
    let n = select(p.V, 0u, p.temperature <= 0.0);      // logits summed: 0 or V
//!else
    let tau = 0.5 * (state.lo + state.hi);
    let n = select(p.V, 0u, p.temperature <= 0.0 || p.top_p >= 1.0);
//!endif
    let mx = state.mx;
    var s = 0.0;
    if (n > 0u) {
        for (var i = lid; i < p.V; i += LANES) {
            let q = q_at(i, mx);
            if (q >= tau) { s += q; }
        }
    }
    red[lid] = s;
    reduce_lanes(lid, 1u);
    if (lid == 0u && n > 0u) {
        let mass = red[0];
//!if TOTAL
        state.total = mass;
        state.kept = mass;
//!else
        if (mass >= p.top_p * state.total) {
            state.lo = tau;
            state.kept = mass;
        } else {
            state.hi = tau;
        }
//!endif
    }
}
