// Weight decoding, included by every kernel that reads a weight buffer named `w`.
// Weights are stored as 32-bit words: f32 as its bits, f16 as two halves per word (element 2i in the
// low half, little-endian). Arithmetic is always f32, so adapters without shader-f16 run every model.
// `i` is an element index, not a word index.
//!if W_F16
fn w_at(i: u32) -> f32 {
    let pair = unpack2x16float(w[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
//!else
fn w_at(i: u32) -> f32 {
    return bitcast<f32>(w[i]);
}
//!endif
