// Picks the next token from one row of logits, on the GPU, so decoding reads back only the token id.
//   logits: [rows, V]  ->  token[0]
// temperature == 0: argmax (lowest index on ties). Otherwise nucleus sampling: probabilities
// q_i = exp((l_i - max) / temperature); the kept set is every q_i >= tau, where tau is the largest
// threshold whose kept mass is at least top_p of the total (found by bisection, so no sort);
// `u` in [0, 1) from the host's seeded generator picks a token from the kept mass in index order.
struct Params { V: u32, row: u32, temperature: f32, top_p: f32, u: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> token: array<u32>;

//!const WG
const N: u32 = WG;
var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;
var<workgroup> tau_s: f32;

fn sum_all(lid: u32, v: f32) -> f32 {
    red_v[lid] = v;
    workgroupBarrier();
    for (var s = N / 2u; s > 0u; s = s / 2u) {
        if (lid < s) { red_v[lid] += red_v[lid + s]; }
        workgroupBarrier();
    }
    let total = red_v[0];
    workgroupBarrier();
    return total;
}

fn q_at(i: u32, mx: f32) -> f32 {
    return exp((logits[p.row * p.V + i] - mx) / p.temperature);
}

// Kept mass above threshold tau, summed over the whole row.
fn mass_above(lid: u32, mx: f32, tau: f32) -> f32 {
    var s = 0.0;
    for (var i = lid; i < p.V; i += N) {
        let q = q_at(i, mx);
        if (q >= tau) { s += q; }
    }
    return sum_all(lid, s);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    // argmax, with the lowest index on ties
    var best = -3.4e38;
    var best_i = 0u;
    for (var i = lid; i < p.V; i += N) {
        let v = logits[p.row * p.V + i];
        if (v > best) { best = v; best_i = i; }
    }
    red_v[lid] = best;
    red_i[lid] = best_i;
    workgroupBarrier();
    for (var s = N / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            let ov = red_v[lid + s];
            let oi = red_i[lid + s];
            if (ov > red_v[lid] || (ov == red_v[lid] && oi < red_i[lid])) { red_v[lid] = ov; red_i[lid] = oi; }
        }
        workgroupBarrier();
    }
    let mx = red_v[0];
    let arg = red_i[0];
    workgroupBarrier();
    if (p.temperature <= 0.0) {
        if (lid == 0u) { token[0] = arg; }
        return;
    }

    let total = mass_above(lid, mx, 0.0);
    // bisection for tau in [0, 1]: mass_above is non-increasing in tau; the max token has q = 1
    var lo = 0.0;
    var hi = 1.0;
    if (p.top_p < 1.0) {
        for (var it = 0u; it < 30u; it++) {
            let mid = 0.5 * (lo + hi);
            if (mass_above(lid, mx, mid) >= p.top_p * total) { lo = mid; } else { hi = mid; }
        }
    }
    let tau = lo;
    let kept = mass_above(lid, mx, tau);
    let goal = p.u * kept;

    // each lane owns a contiguous chunk; an exclusive prefix over lanes finds the chunk holding goal
    let chunk = (p.V + N - 1u) / N;
    let begin = min(lid * chunk, p.V);
    let end = min(begin + chunk, p.V);
    var own = 0.0;
    for (var i = begin; i < end; i++) {
        let q = q_at(i, mx);
        if (q >= tau) { own += q; }
    }
    red_v[lid] = own;
    workgroupBarrier();
    if (lid == 0u) {
        var run = 0.0;
        for (var i = 0u; i < N; i++) { let o = red_v[i]; red_v[i] = run; run += o; }
    }
    workgroupBarrier();
    let before = red_v[lid];
    if (lid == 0u) { token[0] = arg; }   // fallback if rounding leaves goal past the last kept token
    storageBarrier();
    if (goal >= before && goal < before + own) {
        var run = before;
        for (var i = begin; i < end; i++) {
            let q = q_at(i, mx);
            if (q >= tau) {
                run += q;
                if (goal < run) { token[0] = i; break; }
            }
        }
    }
}
