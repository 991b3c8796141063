// Opens a WebGPU device with the limits webmoe needs. Every kernel computes in f32, so adapters without
// shader-f16 (SwiftShader, some phones) run every package; f16 weights are unpacked with unpack2x16float.
import { DeviceError } from "./errors.js";

// maxBinding lowers the storage binding limit the runtime keeps to (tests exercise at small sizes what real
// sizes need); the device itself is opened with the adapter's full limits.
export async function openDevice({ maxBinding } = {}) {
  if (!globalThis.navigator?.gpu) {
    throw new DeviceError("WebGPU is not available in this browser. Use a recent Chrome, Edge or Safari, " +
                            "or enable WebGPU (chrome://flags/#enable-unsafe-webgpu).");
  }
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new DeviceError("WebGPU is present but no GPU adapter is available.");
  const L = adapter.limits;
  const requiredFeatures = ["subgroups", "timestamp-query"].filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({
    label: "webmoe",
    requiredFeatures,
    requiredLimits: {
      maxStorageBufferBindingSize: L.maxStorageBufferBindingSize,
      maxBufferSize: L.maxBufferSize,
      maxStorageBuffersPerShaderStage: Math.min(L.maxStorageBuffersPerShaderStage, 10),
      maxComputeWorkgroupStorageSize: Math.min(L.maxComputeWorkgroupStorageSize, 16384),
    },
  });
  const info = adapter.info || {};
  const description = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(" / ") || "unknown adapter";
  const limit = device.limits.maxStorageBufferBindingSize;
  const subgroupSize = device.features.has("subgroups") ? await probeSubgroupSize(device) : 0;
  // a fallback adapter is WebGPU on the processor (SwiftShader, WARP): it runs the plan's "cpu" variant
  const adapterClass = info.isFallbackAdapter ? "cpu" : "gpu";
  return { adapter, device, description, adapterClass, shaderF16: adapter.features.has("shader-f16"), subgroupSize,
           maxBinding: maxBinding ? Math.min(limit, maxBinding) : limit, maxBuffer: device.limits.maxBufferSize };
}

const PROBE = `enable subgroups;
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) size: u32) {
    if (lid == 0u) { out[0] = size; }
}
`;

// The subgroup size a compute pipeline gets, read back from a one-lane probe: adapters report only a range
// (SwiftShader runs 4 lanes per subgroup, lavapipe 8 with AVX2, NVIDIA 32).
async function probeSubgroupSize(device) {
  const out = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const read = device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const pipeline = await device.createComputePipelineAsync({
    layout: "auto", compute: { module: device.createShaderModule({ code: PROBE }), entryPoint: "main" } });
  const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0),
                                         entries: [{ binding: 0, resource: { buffer: out } }] });
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, group);
  pass.dispatchWorkgroups(1);
  pass.end();
  encoder.copyBufferToBuffer(out, 0, read, 0, 16);
  device.queue.submit([encoder.finish()]);
  await read.mapAsync(GPUMapMode.READ);
  const size = new Uint32Array(read.getMappedRange())[0];
  read.unmap();
  out.destroy();
  read.destroy();
  return size;
}
