// Stores the keys and values of T new tokens into their caches, rotating the keys on the way (ROPE; what
// rope + kv_write did as three steps): row t of k and v goes to row cache_rows[t] (its sequence's rows, at
// its position positions[t]).
//   k: [T, n_kv * D]  v: [T, n_kv * Dv]  k_cache: [rows, n_kv * D]  v_cache: [rows, n_kv * Dv]
//   cache_rows, positions (ROPE): [T] u32
struct Params { T: u32, n_kv: u32, D: u32, Dv: u32, rot: u32, rot_off: u32, attn_factor: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read> cache_rows: array<u32>;
//!if ROPE
@group(0) @binding(6) var<storage, read> positions: array<u32>;
@group(0) @binding(7) var<storage, read> inv_freq: array<f32>;  // [rot / 2]
//!include rotary.wgsl
//!endif

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;             // element of the row: head i / D, dim i % D
    let t = g.y;
    if (t >= p.T) { return; }
    let row = cache_rows[t];
    let kw = p.n_kv * p.D;
    if (i < kw) {
        var value = k[t * kw + i];
//!if ROPE
        let d = i % p.D;
        value = rotary_value(d, value, k[t * kw + i - d + rotary_partner(d)], positions[t]);
//!endif
        k_cache[row * kw + i] = value;
    }
    let vw = p.n_kv * p.Dv;
    if (i < vw) { v_cache[row * vw + i] = v[t * vw + i]; }
}
