// What the sampler's passes hand each other (sample_max -> sample_mass TOTAL -> sample_mass x bisection
// steps -> sample_chunks -> sample_pick), in a plan buffer of 8 words, and their shared inputs.
//   logits: [rows, V]; the sampled row is p.row. q_i = exp((l_i - max) / temperature), so the max has q = 1.
struct Params { V: u32, row: u32, temperature: f32, top_p: f32, u: f32 }
struct SampleState {
    mx: f32,      // the row's largest logit
    arg: u32,     // its index (lowest on ties)
    lo: f32,      // the nucleus threshold tau lies in [lo, hi]; lo's kept mass is at least top_p of the total
    hi: f32,
    total: f32,   // sum of every q_i
    kept: f32,    // sum of the q_i >= lo
    pad0: u32,
    pad1: u32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;

fn q_at(i: u32, mx: f32) -> f32 {
    return exp((logits[p.row * p.V + i] - mx) / p.temperature);
}
