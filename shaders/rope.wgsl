// Rotary position embedding, in place on x: [rows, n_heads, D] where row row0 + t holds token t, at the
// absolute position positions[t] (tokens of a batch may belong to different sequences). Only `rot` dims of
// each head rotate, starting at rot_off (partial rotary; MLA rotates the last qk_rope_head_dim dims of each
// query head).
// inv_freq [rot / 2] and attn_factor come from the converter, so every scaling scheme (default, linear,
// YaRN, llama3) is converter work only. Default pairing is rotate_half (i, i + rot/2); INTERLEAVED pairs
// (2i, 2i + 1) as in GPT-J-style checkpoints. The arithmetic is rotary.wgsl's, which the kernels that rotate
// on the way (kv_store, attention's ROPE_Q) share: one lane rotates one pair in place.
struct Params { T: u32, row0: u32, n_heads: u32, D: u32, rot: u32, rot_off: u32, attn_factor: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;  // [rot / 2]
@group(0) @binding(2) var<storage, read_write> x: array<f32>;   // [rows, n_heads, D]
@group(0) @binding(3) var<storage, read> positions: array<u32>; // [T]
//!include rotary.wgsl

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;                 // the pair
    let head = g.y;
    let t = g.z;
    if (i >= p.rot / 2u || head >= p.n_heads || t >= p.T) { return; }
    let base = ((p.row0 + t) * p.n_heads + head) * p.D;
//!if INTERLEAVED
    let da = p.rot_off + 2u * i;
//!else
    let da = p.rot_off + i;
//!endif
    let db = rotary_partner(da);
    let a = x[base + da];
    let b = x[base + db];
    x[base + da] = rotary_value(da, a, b, positions[t]);
    x[base + db] = rotary_value(db, b, a, positions[t]);
}
