// Groups the (token, slot-k) pairs by expert (expert_sort.wgsl) as a step of its own, after the router; new
// plans fuse it into the router (router.wgsl's GATHER). One workgroup.
struct Params { pairs: u32, E: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> topk_ids: array<u32>;          // [pairs]
@group(0) @binding(2) var<storage, read_write> expert_offsets: array<u32>; // [E + 1]
@group(0) @binding(3) var<storage, read_write> pair_order: array<u32>;   // [pairs]
@group(0) @binding(4) var<storage, read_write> active_experts: array<u32>; // [E + 1 + E]

//!const WG
//!const MAX_E
//!include expert_sort.wgsl

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    sort_pairs(lid, p.pairs, p.E);
}
