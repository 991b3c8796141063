// Stores the keys or values of T new tokens into the cache: row t of src goes to row cache_rows[t]
// (its sequence's rows, at its position), `width` values per row.
//   src: [T, width]   cache: [rows, width]   cache_rows: [T] u32
struct Params { T: u32, width: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<f32>;
@group(0) @binding(3) var<storage, read> cache_rows: array<u32>;

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;
    let t = g.y;
    if (i >= p.width || t >= p.T) { return; }
    cache[cache_rows[t] * p.width + i] = src[t * p.width + i];
}
