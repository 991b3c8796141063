// Weight decoding, included by every kernel that reads a weight buffer `w: array<u32>`.
// A weight format is a sequence of blocks of W_BLOCK elements in W_BLOCK_WORDS words (converter/quant.py
// writes them and states each layout); `w_at(i)` decodes element i (an element index, not a word index)
// in registers. Arithmetic is always f32, so adapters without shader-f16 run every format.
// The plan selects the format with one define: none (f32), W_F16, W_Q8, W_Q4 or W_MXFP4.
//!if W_F16
const W_BLOCK: u32 = 2u;
const W_BLOCK_WORDS: u32 = 1u;
fn w_at(i: u32) -> f32 {
    let pair = unpack2x16float(w[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
//!else
//!if W_Q8
// 64 int8 values in words 0-15, then one word of two f16 scales (one per 32 values)
const W_BLOCK: u32 = 64u;
const W_BLOCK_WORDS: u32 = 17u;
fn w_at(i: u32) -> f32 {
    let base = (i / 64u) * 17u;
    let r = i % 64u;
    let q = extractBits(bitcast<i32>(w[base + (r >> 2u)]), 8u * (r & 3u), 8u);    // sign-extended
    let d = unpack2x16float(w[base + 16u]);
    return f32(q) * select(d.x, d.y, r >= 32u);
}
//!else
//!if W_Q4
// 256 4-bit values in words 0-31, 8-bit scales of the 8 sub-blocks in words 32-33, 8-bit minimums in
// 34-35, f16 d and dmin in word 36: value = d * scale[s] * q - dmin * min[s]
const W_BLOCK: u32 = 256u;
const W_BLOCK_WORDS: u32 = 37u;
fn w_at(i: u32) -> f32 {
    let base = (i / 256u) * 37u;
    let r = i % 256u;
    let s = r >> 5u;
    let q = extractBits(w[base + (r >> 3u)], 4u * (r & 7u), 4u);
    let sc = extractBits(w[base + 32u + (s >> 2u)], 8u * (s & 3u), 8u);
    let mn = extractBits(w[base + 34u + (s >> 2u)], 8u * (s & 3u), 8u);
    let d = unpack2x16float(w[base + 36u]);
    return d.x * f32(sc) * f32(q) - d.y * f32(mn);
}
//!else
//!if W_MXFP4
// 4 OCP MXFP4 blocks: 128 e2m1 codes in words 0-15 (low nibble first), the blocks' E8M0 exponents in word 16
const W_BLOCK: u32 = 128u;
const W_BLOCK_WORDS: u32 = 17u;
fn w_at(i: u32) -> f32 {
    let base = (i / 128u) * 17u;
    let r = i % 128u;
    let code = extractBits(w[base + (r >> 3u)], 4u * (r & 7u), 4u);
    let e = extractBits(w[base + 16u], 8u * (r >> 5u), 8u);
    // e2m1: sign, 2 exponent bits, 1 mantissa bit; exponent 0 is subnormal (0 or 0.5)
    let ex = (code >> 1u) & 3u;
    let mant = f32(code & 1u);
    let mag = select(0.5 * mant, (1.0 + 0.5 * mant) * f32(1u << ex) * 0.5, ex != 0u);
    return ldexp(select(mag, -mag, (code & 8u) != 0u), i32(e) - 127);
}
//!else
const W_BLOCK: u32 = 1u;
const W_BLOCK_WORDS: u32 = 1u;
fn w_at(i: u32) -> f32 {
    return bitcast<f32>(w[i]);
}
//!endif
//!endif
//!endif
//!endif

// The word where element `i` starts, for `i` a multiple of W_BLOCK (the start of a tensor in a slot).
fn w_word(i: u32) -> u32 {
    return i / W_BLOCK * W_BLOCK_WORDS;
}
