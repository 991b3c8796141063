// Prefetch predictor, the twin of engine/prefetch.py: from the plan's MoE layer records, for each MoE
// layer L followed by a MoE layer L', copies L''s router-logits and router steps, fed with L's router
// input, into a small plan of their own, writing to buffers of their own: pred_logits, pred_ids and pred_w, and
// a pred_ copy of any other plan buffer the router step binds besides the pass's inputs (a router that also
// sorts the pairs by expert, GATHER, writes three more). The engine runs them at L's routing read-back and
// loads the predicted experts for L'.

// -> {plan, ranges: Map(layer L -> [first step, stop step, predicted layer L'])}
export function predictorPlan(plan, numExperts, topK) {
  const layers = plan.moe_layers;
  const out = { buffers: { pred_logits: { shape: ["T", numExperts], dtype: "f32" },
                           pred_ids: { shape: ["T", topK], dtype: "u32" },
                           pred_w: { shape: ["T", topK], dtype: "f32" } }, steps: [] };
  const ranges = new Map();
  layers.slice(0, -1).forEach((rec, i) => {
    const next = layers[i + 1];
    const matmul = structuredClone(plan.steps[next.router_logits_step]);
    const router = structuredClone(plan.steps[next.router_step]);
    Object.assign(matmul.bind, { x: rec.router_input, y: "pred_logits" });
    Object.assign(router.bind, { logits: "pred_logits", topk_ids: "pred_ids", topk_w: "pred_w" });
    const inputs = new Set(Object.values(plan.io));
    for (const [name, target] of Object.entries(router.bind)) {
      if (target in plan.buffers && !inputs.has(target)) {
        out.buffers[`pred_${target}`] = plan.buffers[target];
        router.bind[name] = `pred_${target}`;
      }
    }
    matmul.label = `predict L${next.layer} logits`;
    router.label = `predict L${next.layer} router`;
    ranges.set(rec.layer, [out.steps.length, out.steps.length + 2, next.layer]);
    out.steps.push(matmul, router);
  });
  return { plan: out, ranges };
}
