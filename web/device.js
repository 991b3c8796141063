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
  const device = await adapter.requestDevice({
    label: "webmoe",
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
  return { adapter, device, description, shaderF16: adapter.features.has("shader-f16"),
           maxBinding: maxBinding ? Math.min(limit, maxBinding) : limit, maxBuffer: device.limits.maxBufferSize };
}
