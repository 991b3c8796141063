// Groups the (token, slot-k) pairs by expert: pair_order lists pair indices p = t * K + j sorted by
// expert, and expert_offsets[e] .. expert_offsets[e + 1] is expert e's range in it (a counting sort).
// active_experts lists the experts that have pairs, so that the expert kernels' dispatch need not cover
// the others: active_experts[e] (e <= E) is the number of such experts below e, and active_experts[E + 1 +
// r] is the r-th of them in expert order.
// One workgroup. The order inside an expert's range is arbitrary; every pair's result is computed on
// its own, so the output does not depend on it.
struct Params { pairs: u32, E: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> topk_ids: array<u32>;          // [pairs]
@group(0) @binding(2) var<storage, read_write> expert_offsets: array<u32>; // [E + 1]
@group(0) @binding(3) var<storage, read_write> pair_order: array<u32>;   // [pairs]
@group(0) @binding(4) var<storage, read_write> active_experts: array<u32>; // [E + 1 + E]

//!const WG
//!const MAX_E
var<workgroup> count: array<atomic<u32>, MAX_E>;
var<workgroup> cursor: array<atomic<u32>, MAX_E>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    for (var e = lid; e < p.E; e += WG) { atomicStore(&count[e], 0u); }
    workgroupBarrier();
    for (var i = lid; i < p.pairs; i += WG) { atomicAdd(&count[topk_ids[i]], 1u); }
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0u;
        var n_active = 0u;
        for (var e = 0u; e < p.E; e++) {
            expert_offsets[e] = run;
            atomicStore(&cursor[e], run);
            let c = atomicLoad(&count[e]);
            active_experts[e] = n_active;
            if (c > 0u) {
                active_experts[p.E + 1u + n_active] = e;
                n_active += 1u;
            }
            run += c;
        }
        expert_offsets[p.E] = run;
        active_experts[p.E] = n_active;
    }
    workgroupBarrier();
    for (var i = lid; i < p.pairs; i += WG) {
        let at = atomicAdd(&cursor[topk_ids[i]], 1u);
        pair_order[at] = i;
    }
}
