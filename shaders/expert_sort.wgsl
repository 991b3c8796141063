// Groups the (token, slot-k) pairs by expert, for moe_gather.wgsl and router.wgsl's GATHER: pair_order lists
// pair indices p = t * K + j sorted by expert, and expert_offsets[e] .. expert_offsets[e + 1] is expert
// e's range in it (a counting sort). active_experts lists the experts that have pairs, so that the expert
// kernels' dispatch need not cover the others: active_experts[e] (e <= E) is the number of such experts
// below e, and active_experts[E + 1 + r] is the r-th of them in expert order.
// One workgroup of WG lanes calls sort_pairs (in uniform control flow: it has barriers) after topk_ids is
// written and visible to it. The order inside an expert's range is arbitrary; every pair's result is
// computed on its own, so the output does not depend on it.
// The includer binds topk_ids [pairs] and the read_write expert_offsets [E + 1], pair_order [pairs] and
// active_experts [E + 1 + E], and declares WG and MAX_E.
var<workgroup> count: array<atomic<u32>, MAX_E>;
var<workgroup> cursor: array<atomic<u32>, MAX_E>;

fn sort_pairs(lid: u32, pairs: u32, E: u32) {
    for (var e = lid; e < E; e += WG) { atomicStore(&count[e], 0u); }
    workgroupBarrier();
    for (var i = lid; i < pairs; i += WG) { atomicAdd(&count[topk_ids[i]], 1u); }
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0u;
        var n_active = 0u;
        for (var e = 0u; e < E; e++) {
            expert_offsets[e] = run;
            atomicStore(&cursor[e], run);
            let c = atomicLoad(&count[e]);
            active_experts[e] = n_active;
            if (c > 0u) {
                active_experts[E + 1u + n_active] = e;
                n_active += 1u;
            }
            run += c;
        }
        expert_offsets[E] = run;
        active_experts[E] = n_active;
    }
    workgroupBarrier();
    for (var i = lid; i < pairs; i += WG) {
        let at = atomicAdd(&cursor[topk_ids[i]], 1u);
        pair_order[at] = i;
    }
}
