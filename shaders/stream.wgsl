// The adapter's streaming read bandwidth, measured by `webmoe speed` as the baseline of decode speed:
// the dispatch's lanes together read src once and each writes one sum (so nothing is optimised away).
//   src: [n] vec4   dst: [lanes]
// INTERLEAVED: lane l reads vec4s l, l + lanes, ... (adjacent lanes adjacent addresses: how GPUs coalesce);
// else lane l reads a contiguous run of n / lanes vec4s (how CPU adapters prefetch). The tool reports the
// faster of the two.
struct Params { n: u32, lanes: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let lane = g.x;
    var a = vec4<f32>();
//!if INTERLEAVED
    for (var i = lane; i < p.n; i += p.lanes) { a += src[i]; }
//!else
    let run = p.n / p.lanes;
    for (var i = lane * run; i < (lane + 1u) * run; i++) { a += src[i]; }
//!endif
    dst[lane] = a.x + a.y + a.z + a.w;
}
