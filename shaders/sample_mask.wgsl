// Sampler pass 0, for constrained decoding (JSON mode, a JSON schema, a grammar): the tokens a grammar
// forbids leave the row before the other passes see it. token_mask holds one bit per token, row b's words
// at [b * ceil(V / 32) ..], bit i % 32 of word i / 32 set where token i is allowed (llguidance's
// bitmask layout). A forbidden token's logit becomes -3.4e38 (sample_max's floor; the f32 maximum itself
// is out of range for some compilers' literals), so its q = exp((l - max) / T) is 0 and the argmax never
// picks it; the plan dispatches this pass only for rows that have a mask.
//   logits: [rows, V] (row p.row rewritten in place), token_mask: [rows, ceil(V / 32)] u32
struct Params { V: u32, row: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> token_mask: array<u32>;

//!const WG

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.V) { return; }
    let words = (p.V + 31u) / 32u;
    if ((token_mask[p.row * words + i / 32u] & (1u << (i % 32u))) == 0u) {
        logits[p.row * p.V + i] = -3.4e38;
    }
}
