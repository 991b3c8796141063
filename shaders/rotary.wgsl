// Rotary position embedding of one element of a head: the one statement of its arithmetic, for the kernels
// that rotate on the way (kv_store's keys, attention's ROPE_Q queries) and for rope.wgsl, which rotates a
// buffer in place. The includer binds `inv_freq: array<f32>` ([rot / 2]) and has Params fields rot, rot_off
// and attn_factor. Dims rot_off .. rot_off + rot of a head rotate; rotate_half pairs (i, i + rot/2),
// INTERLEAVED pairs (2i, 2i + 1).

// The dim of the head that element d pairs with (d itself when d does not rotate).
fn rotary_partner(d: u32) -> u32 {
    if (d < p.rot_off || d >= p.rot_off + p.rot) { return d; }
    let rel = d - p.rot_off;
//!if INTERLEAVED
    return p.rot_off + (rel ^ 1u);
//!else
    let half = p.rot / 2u;
    return select(d + half, d - half, rel >= half);
//!endif
}

// Element d of a head at absolute position pos, rotated: own is its value, partner rotary_partner(d)'s.
fn rotary_value(d: u32, own: f32, partner: f32, pos: u32) -> f32 {
    if (d < p.rot_off || d >= p.rot_off + p.rot) { return own; }
    let rel = d - p.rot_off;
//!if INTERLEAVED
    let i = rel / 2u;
    let first = (rel & 1u) == 0u;
//!else
    let half = p.rot / 2u;
    let i = rel % half;
    let first = rel < half;
//!endif
    let angle = f32(pos) * inv_freq[i];
    let c = cos(angle) * p.attn_factor;
    let s = sin(angle) * p.attn_factor;
    if (first) { return own * c - partner * s; }
    return own * c + partner * s;
}
