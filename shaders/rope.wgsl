// Rotary position embedding, in place on x: [rows, n_heads, D] where row row0 + t holds token t, at the
// absolute position positions[t] (tokens of a batch may belong to different sequences). Only `rot` dims of
// each head rotate, starting at rot_off (partial rotary; MLA rotates the last qk_rope_head_dim dims of each
// query head).
// inv_freq [rot / 2] and attn_factor come from the converter, so every scaling scheme (default, linear,
// YaRN, llama3) is converter work only. Default pairing is rotate_half (i, i + rot/2); INTERLEAVED pairs
// (2i, 2i + 1) as in GPT-J-style checkpoints.
struct Params { T: u32, row0: u32, n_heads: u32, D: u32, rot: u32, rot_off: u32, attn_factor: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;  // [rot / 2]
@group(0) @binding(2) var<storage, read_write> x: array<f32>;   // [rows, n_heads, D]
@group(0) @binding(3) var<storage, read> positions: array<u32>; // [T]

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let half = p.rot / 2u;
    let i = g.x;
    let head = g.y;
    let t = g.z;
    if (i >= half || head >= p.n_heads || t >= p.T) { return; }
    let angle = f32(positions[t]) * inv_freq[i];
    let c = cos(angle) * p.attn_factor;
    let s = sin(angle) * p.attn_factor;
    let base = ((p.row0 + t) * p.n_heads + head) * p.D + p.rot_off;
//!if INTERLEAVED
    let ia = base + 2u * i;
    let ib = ia + 1u;
//!else
    let ia = base + i;
    let ib = base + i + half;
//!endif
    let a = x[ia];
    let b = x[ib];
    x[ia] = a * c - b * s;
    x[ib] = b * c + a * s;
}
