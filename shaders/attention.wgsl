// Causal grouped-query attention of T new queries over the KV cache, one workgroup per (head, query).
//   q: [T, n_heads, D]   k_cache: [rows, k_stride]   v_cache: [rows, v_stride]   out: [T, n_heads, Dv]
//   positions, cache_rows: [T] u32
// Query t sits at absolute position pos = positions[t] of a sequence whose cache rows start at
// base = cache_rows[t] - pos (each sequence of a batch has its own rows). Position s's key for KV head kv
// is k_cache[(base + s) * k_stride + kv * D ..], its value v_cache[(base + s) * v_stride + kv * Dv ..]:
// plain caches have strides n_kv * D and n_kv * Dv; MLA's latent cache binds one buffer of
// [latent | rotary key] rows as both, the value being the latent (Dv < D).
// The query sees keys lo..pos, where lo = 0, or with a sliding window the last `window` positions. Keys are visited in chunks of LANES with an online softmax, so no
// score buffer is needed whatever the context length. Each lane owns up to DIMS_PER_LANE output dims
// (the plan sets it to ceil(max(D, Dv) / LANES)).
// VEC4 (the plan sets it when D, k_stride are multiples of 4) reads keys as vec4.
// SINKS (GPT-OSS): a learned per-head logit joins the softmax's denominator and attends to nothing.
// ROPE_Q: the queries are rotated as they are read (rotary.wgsl; the keys were, on their way into the
// cache: kv_store.wgsl), so no step rotates q in place.
struct Params { T: u32, n_heads: u32, n_kv: u32, D: u32, Dv: u32, k_stride: u32, v_stride: u32,
                window: u32, scale: f32,
//!if ROPE_Q
                rot: u32, rot_off: u32, attn_factor: f32,
//!endif
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> positions: array<u32>;
@group(0) @binding(6) var<storage, read> cache_rows: array<u32>;
//!if SINKS
@group(0) @binding(7) var<storage, read> sinks: array<f32>;     // [n_heads]
//!endif
//!if ROPE_Q
@group(0) @binding(8) var<storage, read> inv_freq: array<f32>;  // [rot / 2]
//!include rotary.wgsl
//!endif

//!const LANES
//!const DIMS_PER_LANE
var<workgroup> q_s: array<f32, LANES * DIMS_PER_LANE>;  // [D], pre-scaled
var<workgroup> score: array<f32, LANES>;                // [chunk]

@compute @workgroup_size(LANES)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let head = wg.x;
    let t = wg.y;
    if (head >= p.n_heads || t >= p.T) { return; }
    let kv = head / (p.n_heads / p.n_kv);
    let pos = positions[t];
    let base = cache_rows[t] - pos;
    var lo = 0u;
    if (p.window > 0u && pos + 1u > p.window) { lo = pos + 1u - p.window; }

    let q0 = (t * p.n_heads + head) * p.D;
    for (var d = lid; d < p.D; d += LANES) {
        var qd = q[q0 + d];
//!if ROPE_Q
        qd = rotary_value(d, qd, q[q0 + rotary_partner(d)], pos);
//!endif
        q_s[d] = qd * p.scale;
    }
    workgroupBarrier();

    var m = -3.0e38;      // running max
    var l = 0.0;          // running sum of exp(score - m)
//!if SINKS
    m = sinks[head];
    l = 1.0;
//!endif
    var acc = array<f32, DIMS_PER_LANE>();
    for (var s0 = lo; s0 <= pos; s0 += LANES) {
        // lane lid scores key s0 + lid; the chunk's max rescales what came before; each lane takes the
        // exponential of its own score once, and every lane then adds the chunk's values for its dims
        let s = s0 + lid;
        var sc = -3.0e38;
        if (s <= pos) {
            let kb = (base + s) * p.k_stride + kv * p.D;
            sc = 0.0;
//!if VEC4
            for (var d = 0u; d < p.D; d += 4u) {
                sc += dot(vec4(q_s[d], q_s[d + 1u], q_s[d + 2u], q_s[d + 3u]), k_cache[(kb + d) >> 2u]);
            }
//!else
            for (var d = 0u; d < p.D; d++) { sc += q_s[d] * k_cache[(kb + d) >> 2u][(kb + d) & 3u]; }
//!endif
        }
        score[lid] = sc;
        workgroupBarrier();
        let n = min(LANES, pos + 1u - s0);
        var cmax = m;
        for (var j = 0u; j < n; j++) { cmax = max(cmax, score[j]); }
        workgroupBarrier();
        score[lid] = exp(sc - cmax);            // 0 for lanes past pos
        workgroupBarrier();
        let rescale = exp(m - cmax);
        l *= rescale;
        for (var c = 0u; c < DIMS_PER_LANE; c++) { acc[c] *= rescale; }
        for (var j = 0u; j < n; j++) {
            let e = score[j];
            l += e;
            let vb = (base + s0 + j) * p.v_stride + kv * p.Dv;
            for (var c = 0u; c < DIMS_PER_LANE; c++) {
                let d = lid + c * LANES;
                if (d < p.Dv) { acc[c] += e * v_cache[vb + d]; }
            }
        }
        m = cmax;
        workgroupBarrier();
    }
    for (var c = 0u; c < DIMS_PER_LANE; c++) {
        let d = lid + c * LANES;
        if (d < p.Dv) { out[(t * p.n_heads + head) * p.Dv + d] = acc[c] / l; }
    }
}
