// Tree reduction across the LANES lanes of a workgroup (a power of two), for up to RED_VALUES values per
// lane at once. Lane `lid` stores value v at red[v * LANES + lid]; after reduce_lanes the sum of value v is
// red[v * LANES]. Both constants come from the plan (the including kernel's geometry).
//!const LANES
//!const RED_VALUES
var<workgroup> red: array<f32, RED_VALUES * LANES>;

fn reduce_lanes(lid: u32, n_values: u32) {
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            for (var v = 0u; v < n_values; v++) {
                red[v * LANES + lid] += red[v * LANES + lid + stride];
            }
        }
        workgroupBarrier();
    }
}
