// Tree reduction across the 64 lanes of a workgroup, for up to RED_VALUES values per lane at once.
// Lane `lid` stores value v at red[v * 64 + lid]; after reduce_lanes the sum of value v is red[v * 64].
const LANES: u32 = 64u;
const RED_VALUES: u32 = 16u;
var<workgroup> red: array<f32, 1024>; // [RED_VALUES, LANES]

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
