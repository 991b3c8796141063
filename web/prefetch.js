// Prefetch predictor, the twin of engine/prefetch.py: for each MoE layer L followed by a MoE layer L',
// copies L''s router-logits matmul and router steps, fed with L's router input, into a small plan of
// their own. The engine runs them at L's routing read-back and loads the predicted experts for L'.

function routerSteps(steps, before) {
  let r = before - 1;
  while (steps[r].kernel !== "router") r--;
  const logits = steps[r].bind.logits;
  let m = r - 1;
  while (!(steps[m].kernel === "matmul" && steps[m].bind.y === logits)) m--;
  return [steps[m], steps[r]];
}

// -> {plan, ranges: Map(layer L -> [first step, stop step, predicted layer L'])}
export function predictorPlan(plan, segments, numExperts, topK) {
  const routers = new Map(segments.map((seg) => [seg.layer, routerSteps(plan.steps, seg.start)]));
  const out = { buffers: { pred_logits: { shape: ["T", numExperts], dtype: "f32" },
                           pred_ids: { shape: ["T", topK], dtype: "u32" },
                           pred_w: { shape: ["T", topK], dtype: "f32" } }, steps: [] };
  const ranges = new Map();
  segments.slice(0, -1).forEach((seg, i) => {
    const next = segments[i + 1];
    const [matmul, router] = routers.get(next.layer).map((s) => structuredClone(s));
    Object.assign(matmul.bind, { x: routers.get(seg.layer)[0].bind.x, y: "pred_logits" });
    Object.assign(router.bind, { logits: "pred_logits", topk_ids: "pred_ids", topk_w: "pred_w" });
    ranges.set(seg.layer, [out.steps.length, out.steps.length + 2, next.layer]);
    out.steps.push(matmul, router);
  });
  return { plan: out, ranges };
}
