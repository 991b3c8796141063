// Groups the (token, slot-k) pairs by expert: pair_order lists pair indices p = t * K + j sorted by
// expert, and expert_offsets[e] .. expert_offsets[e + 1] is expert e's range in it (a counting sort).
// One workgroup. The order inside an expert's range is arbitrary; every pair's result is computed on
// its own, so the output does not depend on it.
struct Params { pairs: u32, E: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> topk_ids: array<u32>;          // [pairs]
@group(0) @binding(2) var<storage, read_write> expert_offsets: array<u32>; // [E + 1]
@group(0) @binding(3) var<storage, read_write> pair_order: array<u32>;   // [pairs]

const MAX_E: u32 = 1024u;
var<workgroup> count: array<atomic<u32>, 1024>;
var<workgroup> cursor: array<atomic<u32>, 1024>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    for (var e = lid; e < p.E; e += 256u) { atomicStore(&count[e], 0u); }
    workgroupBarrier();
    for (var i = lid; i < p.pairs; i += 256u) { atomicAdd(&count[topk_ids[i]], 1u); }
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0u;
        for (var e = 0u; e < p.E; e++) {
            expert_offsets[e] = run;
            atomicStore(&cursor[e], run);
            run += atomicLoad(&count[e]);
        }
        expert_offsets[p.E] = run;
    }
    workgroupBarrier();
    for (var i = lid; i < p.pairs; i += 256u) {
        let at = atomicAdd(&cursor[topk_ids[i]], 1u);
        pair_order[at] = i;
    }
}
