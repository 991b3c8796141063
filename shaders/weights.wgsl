// Weight decoding, included by every kernel that reads a weight buffer `w: array<WeightWord>`: 16-byte
// words for f32 and f16 (w_step reads eight weights in one or two loads), 32-bit words for the block
// formats, whose codes and scales sit at word offsets (a word read out of a vec4 costs the whole vec4's
// load in SwiftShader: the q8 and q4 prefill matmul 1.15x faster there). w_u32(j) is word j either way.
// A weight format is a sequence of blocks of W_BLOCK elements in W_BLOCK_WORDS 32-bit words
// (format/weight_formats.py states each layout, converter/quant.py writes them). Two ways to read, both decoding in registers:
//   w_at(i)    element i (an element index, not a word index), for any i;
//   w_step(i)  elements i .. i + 7 (W_STEP) for i a multiple of 8, as one Vec8: f32 and f16 from two or one
//              16-byte loads, the block formats from one or two words of codes and their block's scale.
//              What the matrix kernels' inner loops use; eight values never straddle a block format's scale.
// Arithmetic is always f32, so adapters without shader-f16 run every format.
// The plan selects the format with one define: none (f32), W_F16, W_Q8, W_Q4 or W_MXFP4.

struct Vec8 { lo: vec4<f32>, hi: vec4<f32> }     // eight consecutive values
fn vec8_at(v: Vec8, c: u32) -> f32 { return select(v.hi[c & 3u], v.lo[c & 3u], c < 4u); }     // value c < 8
const W_STEP: u32 = 8u;


// The 8 nibbles of a word, low first, as two vec4 of 0 .. 15.
fn nibbles(v: u32) -> array<vec4<u32>, 2> {
    return array((vec4(v) >> vec4(0u, 4u, 8u, 12u)) & vec4(15u), (vec4(v) >> vec4(16u, 20u, 24u, 28u)) & vec4(15u));
}
//!if W_F16
alias WeightWord = vec4<u32>;
fn w_u32(j: u32) -> u32 { return w[j >> 2u][j & 3u]; }
const W_BLOCK: u32 = 2u;
const W_BLOCK_WORDS: u32 = 1u;
fn w_at(i: u32) -> f32 {
    let pair = unpack2x16float(w_u32(i >> 1u));
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
fn w_step(i: u32) -> Vec8 {
    let q = w[i >> 3u];
    return Vec8(vec4(unpack2x16float(q.x), unpack2x16float(q.y)), vec4(unpack2x16float(q.z), unpack2x16float(q.w)));
}
//!elif W_Q8
alias WeightWord = u32;
fn w_u32(j: u32) -> u32 { return w[j]; }
// 64 int8 values in words 0-15, then one word of two f16 scales (one per 32 values)
const W_BLOCK: u32 = 64u;
const W_BLOCK_WORDS: u32 = 17u;
fn w_at(i: u32) -> f32 {
    let base = (i / 64u) * 17u;
    let r = i % 64u;
    let q = extractBits(bitcast<i32>(w_u32(base + (r >> 2u))), 8u * (r & 3u), 8u);    // sign-extended
    let d = unpack2x16float(w_u32(base + 16u));
    return f32(q) * select(d.x, d.y, r >= 32u);
}
// the 4 signed bytes of a word, low first
fn i8x4(v: u32) -> vec4<f32> {
    return vec4<f32>((vec4(bitcast<i32>(v)) << vec4(24u, 16u, 8u, 0u)) >> vec4(24u));
}
fn w_step(i: u32) -> Vec8 {
    let base = (i / 64u) * 17u;
    let r = i % 64u;
    let j = base + (r >> 2u);
    let d = unpack2x16float(w_u32(base + 16u));
    let s = select(d.x, d.y, r >= 32u);
    return Vec8(i8x4(w_u32(j)) * s, i8x4(w_u32(j + 1u)) * s);
}
//!elif W_Q4
alias WeightWord = u32;
fn w_u32(j: u32) -> u32 { return w[j]; }
// 256 4-bit values in words 0-31, 8-bit scales of the 8 sub-blocks in words 32-33, 8-bit minimums in
// 34-35, f16 d and dmin in word 36: value = d * scale[s] * q - dmin * min[s]
const W_BLOCK: u32 = 256u;
const W_BLOCK_WORDS: u32 = 37u;
// d * scale and dmin * min of sub-block s of the block at word base
fn q4_scale_min(base: u32, s: u32) -> vec2<f32> {
    let sc = extractBits(w_u32(base + 32u + (s >> 2u)), 8u * (s & 3u), 8u);
    let mn = extractBits(w_u32(base + 34u + (s >> 2u)), 8u * (s & 3u), 8u);
    let d = unpack2x16float(w_u32(base + 36u));
    return vec2(d.x * f32(sc), d.y * f32(mn));
}
fn w_at(i: u32) -> f32 {
    let base = (i / 256u) * 37u;
    let r = i % 256u;
    let q = extractBits(w_u32(base + (r >> 3u)), 4u * (r & 7u), 4u);
    let sm = q4_scale_min(base, r >> 5u);
    return sm.x * f32(q) - sm.y;
}
fn w_step(i: u32) -> Vec8 {
    let base = (i / 256u) * 37u;
    let r = i % 256u;
    let sm = q4_scale_min(base, r >> 5u);
    let q = nibbles(w_u32(base + (r >> 3u)));
    return Vec8(sm.x * vec4<f32>(q[0]) - sm.y, sm.x * vec4<f32>(q[1]) - sm.y);
}
//!elif W_MXFP4
alias WeightWord = u32;
fn w_u32(j: u32) -> u32 { return w[j]; }
// 4 OCP MXFP4 blocks: 128 e2m1 codes in words 0-15 (low nibble first), the blocks' E8M0 exponents in word 16
const W_BLOCK: u32 = 128u;
const W_BLOCK_WORDS: u32 = 17u;
// e2m1 codes (sign, 2 exponent bits, 1 mantissa bit; exponent 0 is subnormal: 0 or 0.5) times 2^(e - 127)
fn e2m1(code: vec4<u32>, e: u32) -> vec4<f32> {
    let ex = (code >> vec4(1u)) & vec4(3u);
    let mant = vec4<f32>(code & vec4(1u));
    let normal = (1.0 + 0.5 * mant) * vec4<f32>(vec4(1u) << ex) * 0.5;
    let mag = select(0.5 * mant, normal, ex != vec4(0u));
    return ldexp(select(mag, -mag, (code & vec4(8u)) != vec4(0u)), vec4(i32(e) - 127));
}
fn mx_exponent(base: u32, r: u32) -> u32 {
    return extractBits(w_u32(base + 16u), 8u * (r >> 5u), 8u);
}
fn w_at(i: u32) -> f32 {
    let base = (i / 128u) * 17u;
    let r = i % 128u;
    let code = extractBits(w_u32(base + (r >> 3u)), 4u * (r & 7u), 4u);
    return e2m1(vec4(code), mx_exponent(base, r)).x;
}
fn w_step(i: u32) -> Vec8 {
    let base = (i / 128u) * 17u;
    let r = i % 128u;
    let q = nibbles(w_u32(base + (r >> 3u)));
    let e = mx_exponent(base, r);
    return Vec8(e2m1(q[0], e), e2m1(q[1], e));
}
//!else
alias WeightWord = vec4<u32>;
fn w_u32(j: u32) -> u32 { return w[j >> 2u][j & 3u]; }
const W_BLOCK: u32 = 1u;
const W_BLOCK_WORDS: u32 = 1u;
fn w_at(i: u32) -> f32 {
    return bitcast<f32>(w_u32(i));
}
fn w_step(i: u32) -> Vec8 {
    return Vec8(bitcast<vec4<f32>>(w[i >> 2u]), bitcast<vec4<f32>>(w[(i >> 2u) + 1u]));
}
//!endif

// The word where element `i` starts, for `i` a multiple of W_BLOCK (the start of a tensor in a slot).
fn w_word(i: u32) -> u32 {
    return i / W_BLOCK * W_BLOCK_WORDS;
}
