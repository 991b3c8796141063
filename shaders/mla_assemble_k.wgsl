// Multi-head latent attention (DeepSeek-V2/V3): writes the keys of T new tokens into the K cache rows
// pos0 .. pos0 + T, each head's key being its own k_nope followed by the rotated k_rot all heads share.
//   k_nope: [T, n_heads, d_nope]   k_rot: [T, d_rot]   k_cache: [S, n_heads, d_nope + d_rot]
struct Params { T: u32, pos0: u32, n_heads: u32, d_nope: u32, d_rot: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k_nope: array<f32>;
@group(0) @binding(2) var<storage, read> k_rot: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let D = p.d_nope + p.d_rot;
    let i = g.x;                  // index within the token's [n_heads, D] row
    let t = g.y;
    if (i >= p.n_heads * D || t >= p.T) { return; }
    let head = i / D;
    let d = i % D;
    var v = 0.0;
    if (d < p.d_nope) { v = k_nope[(t * p.n_heads + head) * p.d_nope + d]; } else { v = k_rot[t * p.d_rot + d - p.d_nope]; }
    k_cache[(p.pos0 + t) * p.n_heads * D + i] = v;
}
