// MoE router: expert scores from router logits, top-k selection and weight normalisation, per token.
//   logits: [T, E]  ->  topk_ids: [T, K] (u32), topk_w: [T, K]
// scoring 0 = softmax over all experts, 1 = sigmoid, 2 = PhiMoE's sparsemixer at inference: the j-th
// expert is the best not yet chosen, weighted by its softmax among the remaining experts whose logit is
// within 2 * jitter_eps (relative) of it. Ranking by logit equals ranking by score for all three, so
// no per-token score array is kept. 3 = DeepSeek-V3: experts are chosen by sigmoid(logit) + bias
// (e_score_correction_bias, CHOICE_BIAS) only inside the topk_group of n_group expert groups with the
// best sum of their top-2 choice scores, and weighted by sigmoid(logit). normalize = 1 divides the k
// weights by their sum; `scale` multiplies them afterwards (routed_scaling_factor).
// Ties go to the lower expert index.
// GATHER: the same workgroup then groups the (token, k) pairs by expert (expert_sort.wgsl, what moe_gather
// did as a step of its own); the plan dispatches one workgroup, whose lanes take the tokens in turn.
// strategy 0 is the model's trained routing. The others change the model's output, for experiments
// (softmax and sigmoid scoring only; the runtime refuses the rest): 1 = top-1 switch routing (the model's
// first choice alone, weighted as the model weighs it, renormalised when the model renormalises); 2 = hash
// routing (HASH: expert = hash(token id) mod E, weight 1); 3 = capacity factor: tokens in order, each
// expert takes at most `capacity` (token, slot) pairs per pass and a token whose choice is full goes to
// its next-best expert with room (the best one if all are full). Strategies 1 and 2 fill the K slots
// with the one expert, the others at weight 0.
struct Params { T: u32, E: u32, K: u32, scoring: u32, normalize: u32, scale: f32, jitter_eps: f32,
                n_group: u32, topk_group: u32, strategy: u32, capacity: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> topk_ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> topk_w: array<f32>;
//!if CHOICE_BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;      // [E]
//!endif
//!if HASH
@group(0) @binding(5) var<storage, read> ids: array<u32>;       // [T] token ids
//!endif

//!const WG
//!const MAX_K
//!const MAX_E
//!if GATHER
@group(0) @binding(6) var<storage, read_write> expert_offsets: array<u32>; // [E + 1]
@group(0) @binding(7) var<storage, read_write> pair_order: array<u32>;     // [T * K]
@group(0) @binding(8) var<storage, read_write> active_experts: array<u32>; // [E + 1 + E]
//!include expert_sort.wgsl
//!endif

fn sigmoid(v: f32) -> f32 { return 1.0 / (1.0 + exp(-v)); }

// The value experts are ranked by.
fn choice(row: u32, e: u32) -> f32 {
    let v = logits[row + e];
    if (p.scoring != 3u) { return v; }
//!if CHOICE_BIAS
    return sigmoid(v) + bias[e];
//!else
    return sigmoid(v);
//!endif
}

// Bit g set: group g may be chosen from (always all for scoring != 3).
fn allowed_groups(row: u32) -> u32 {
    if (p.scoring != 3u || p.n_group <= 1u) { return 0xffffffffu; }
    let size = p.E / p.n_group;
    var mask = 0u;
    for (var pick = 0u; pick < p.topk_group; pick++) {
        var best = -3.4e38;
        var best_g = 0u;
        for (var g = 0u; g < p.n_group; g++) {
            if ((mask & (1u << g)) != 0u) { continue; }
            var a = -3.4e38;      // top two choice scores of the group
            var b = -3.4e38;
            for (var e = g * size; e < (g + 1u) * size; e++) {
                let v = choice(row, e);
                if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
            }
            if (a + b > best) { best = a + b; best_g = g; }
        }
        mask |= 1u << best_g;
    }
    return mask;
}

// The model's weight of expert e for the token at `row` (softmax or sigmoid scoring).
fn weight_of(row: u32, e: u32, mx: f32, z: f32) -> f32 {
    if (p.scoring == 0u) { return exp(logits[row + e] - mx) / z; }
    return sigmoid(logits[row + e]);
}

fn one_expert(t: u32, e: u32, wgt: f32) {
    for (var j = 0u; j < p.K; j++) {
        topk_ids[t * p.K + j] = e;
        topk_w[t * p.K + j] = select(0.0, wgt * p.scale, j == 0u);
    }
}

var<workgroup> load: array<u32, MAX_E>;

// Strategy 3, by one lane: tokens in order, each slot the best expert not yet taken that has room.
fn capacity_routing() {
    for (var e = 0u; e < p.E; e++) { load[e] = 0u; }
    for (var t = 0u; t < p.T; t++) {
        let row = t * p.E;
        var mx = -3.0e38;
        for (var e = 0u; e < p.E; e++) { mx = max(mx, logits[row + e]); }
        var z = 0.0;
        for (var e = 0u; e < p.E; e++) { z += exp(logits[row + e] - mx); }
        var total = 0.0;
        for (var j = 0u; j < p.K; j++) {
            var best = -3.4e38;          // with room
            var best_e = p.E;
            var any_best = -3.4e38;      // regardless of room
            var any_e = 0u;
            for (var e = 0u; e < p.E; e++) {
                var taken = false;
                for (var i = 0u; i < j; i++) { taken = taken || topk_ids[t * p.K + i] == e; }
                let v = logits[row + e];
                if (taken) { continue; }
                if (v > any_best) { any_best = v; any_e = e; }
                if (load[e] < p.capacity && v > best) { best = v; best_e = e; }
            }
            if (best_e == p.E) { best_e = any_e; }
            load[best_e] += 1u;
            let wgt = weight_of(row, best_e, mx, z);
            topk_ids[t * p.K + j] = best_e;
            topk_w[t * p.K + j] = wgt;
            total += wgt;
        }
        for (var j = 0u; j < p.K; j++) {
            var wgt = topk_w[t * p.K + j];
            if (p.normalize != 0u) { wgt = wgt / (total + 1e-20); }
            topk_w[t * p.K + j] = wgt * p.scale;
        }
    }
}

// The trained routing (and strategies 1 and 2) of token t.
fn route_token(t: u32) {
    let row = t * p.E;
//!if HASH
    if (p.strategy == 2u) {
        var h = ids[t] * 2654435761u;
        h ^= h >> 15u;
        h *= 2246822519u;
        h ^= h >> 13u;
        one_expert(t, h % p.E, 1.0);
        return;
    }
//!endif
    var mx = -3.0e38;
    for (var e = 0u; e < p.E; e++) { mx = max(mx, logits[row + e]); }
    var z = 0.0;
    for (var e = 0u; e < p.E; e++) { z += exp(logits[row + e] - mx); }

    var chosen = array<u32, MAX_K>();
    var total = 0.0;
    let groups = allowed_groups(row);
    let group_size = p.E / max(p.n_group, 1u);
    for (var j = 0u; j < p.K; j++) {
        var best = -3.4e38;
        var best_e = 0u;
        for (var e = 0u; e < p.E; e++) {
            var taken = false;
            for (var i = 0u; i < j; i++) { taken = taken || chosen[i] == e; }
            let v = choice(row, e);
            if (!taken && (groups & (1u << min(e / group_size, 31u))) != 0u && v > best) { best = v; best_e = e; }
        }
        chosen[j] = best_e;
        best = logits[row + best_e];
        var wgt = 0.0;
        if (p.scoring == 0u) {
            wgt = exp(best - mx) / z;
        } else if (p.scoring == 1u || p.scoring == 3u) {
            wgt = sigmoid(best);
        } else {
            var zm = 0.0;
            for (var e = 0u; e < p.E; e++) {
                var taken = false;
                for (var i = 0u; i < j; i++) { taken = taken || chosen[i] == e; }
                let v = logits[row + e];
                if (!taken && !((best - v) / max(abs(v), best) > 2.0 * p.jitter_eps)) { zm += exp(v - best); }
            }
            wgt = 1.0 / zm;
        }
        topk_ids[t * p.K + j] = best_e;
        topk_w[t * p.K + j] = wgt;
        total += wgt;
    }
    if (p.strategy == 1u) {             // the first choice alone
        let w0 = topk_w[t * p.K];
        one_expert(t, topk_ids[t * p.K], select(w0, 1.0, p.normalize != 0u));
        return;
    }
    for (var j = 0u; j < p.K; j++) {
        var wgt = topk_w[t * p.K + j];
        if (p.normalize != 0u) { wgt = wgt / (total + 1e-20); }
        topk_w[t * p.K + j] = wgt * p.scale;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) groups: vec3<u32>) {
    if (p.strategy == 3u) {
        if (g.x == 0u) { capacity_routing(); }
    } else {
        for (var t = g.x; t < p.T; t += WG * groups.x) { route_token(t); }
    }
//!if GATHER
    storageBarrier();          // every lane's topk_ids, visible to the whole workgroup
    sort_pairs(lid, p.T * p.K, p.E);
//!endif
}
