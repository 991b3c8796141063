// Shared prologue of the grouped expert kernels. The dispatch is [row blocks, min(bank.w, pairs), token
// tiles]: workgroup (_, j, tile) takes up to TILE of the pairs of the j-th expert that has pairs among
// experts bank.z .. bank.z + bank.w (moe_gather's active_experts), and reads its weights once for all of
// them. Piece `piece` of the expert sits in a slot of the slab (slot table `slots` [layers, E, pieces]),
// so any subset of experts can be resident. The slab spans several buffers (banks); `w` is the bank that
// holds slots bank.x .. bank.x + bank.y, and experts bank.z .. bank.z + bank.w may have a slot in it (all
// E when slots are reused across layers, a window while every expert is resident). Empty tiles, and
// experts whose slot is in another bank, return at once.
//!const TILE
var<workgroup> tile_n: u32;                   // pairs in this tile (0 = nothing to do)
var<workgroup> tile_base: u32;                // element offset of the expert's slot in `w`
var<workgroup> tile_pair: array<u32, TILE>;      // pair index p = t * K + j

fn load_tile(lid: u32, j: u32, tile: u32) -> u32 {
    if (lid == 0u) {
        let rank = active_experts[min(bank.z, p.E)] + j;
        let e = active_experts[p.E + 1u + min(rank, p.E - 1u)];
        let begin = expert_offsets[e] + tile * TILE;
        let end = expert_offsets[e + 1u];
        let slot = slots[(p.layer * p.E + e) * p.pieces + p.piece];
        var n = 0u;
        if (rank < active_experts[min(bank.z + bank.w, p.E)] && begin < end && slot >= bank.x &&
            slot < bank.x + bank.y) {
            n = min(TILE, end - begin);
        }
        tile_n = n;
        tile_base = (slot - bank.x) * p.slot_elems;
        for (var j = 0u; j < n; j++) { tile_pair[j] = pair_order[begin + j]; }
    }
    return workgroupUniformLoad(&tile_n);
}

// An f32 value stored in the expert's slot, `word` 32-bit words from its start (biases stay f32 whatever
// the weights' format). `base` is the slot's element offset, a whole number of weight blocks.
fn bias_at(base: u32, word: u32) -> f32 {
    return bitcast<f32>(w_u32(w_word(base) + word));
}
