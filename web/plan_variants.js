// A plan's steps for one class of adapter, twin of format/plan_variants.py: the plan's own steps carry the
// geometry GPUs run fastest; `variants.cpu` the steps whose constants and dispatch differ on adapters that
// run WebGPU on the processor (SwiftShader, WARP: WebGPU's fallback adapters). Nothing else may differ.
export const ADAPTER_CLASSES = ["gpu", "cpu"];

// The plan an adapter of this class runs: the steps with the class's variant applied, without the variants.
// A plan without variants (packages converted before they existed) runs as it is.
export function planFor(plan, adapterClass) {
  if (!ADAPTER_CLASSES.includes(adapterClass)) {
    throw new RangeError(`adapter class ${adapterClass} is none of ${ADAPTER_CLASSES.join(", ")}`);
  }
  const changed = plan.variants?.[adapterClass] || {};
  const steps = plan.steps.map((s, i) => (Object.hasOwn(changed, String(i)) ? { ...s, ...changed[String(i)] } : s));
  const { variants: _, ...rest } = plan;
  return { ...rest, steps };
}
