// GPU time per dispatch from timestamp queries, the browser twin of engine/profiler.py (webmoe speed --browser
// --profile). Each profiled dispatch runs in a compute pass of its own that writes a timestamp at its start
// and end (WebGPU's timestamp-query feature); the passes cost a little time of their own, so profiled runs
// are not the speed figures.
import { DeviceError } from "./errors.js";

export class Profiler {
  constructor(device, maxDispatches = 2048) {        // WebGPU: at most 4096 queries per set
    if (!device.features.has("timestamp-query")) {
      throw new DeviceError("this adapter has no timestamp queries (WebGPU feature timestamp-query): it cannot be profiled");
    }
    this.device = device;
    this.capacity = maxDispatches;
    this.queries = device.createQuerySet({ type: "timestamp", count: 2 * maxDispatches });
    this.resolved = device.createBuffer({ size: 16 * maxDispatches, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    this.readback = device.createBuffer({ size: 16 * maxDispatches, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    this.labels = [];
    this.seconds = new Map();      // label -> [seconds of each dispatch]
  }

  // A compute pass for one dispatch, timed under `label`.
  begin(encoder, label) {
    if (this.labels.length >= this.capacity) {
      throw new DeviceError(`more than ${this.capacity} dispatches between two Profiler.collect calls`);
    }
    const i = this.labels.length;
    this.labels.push(label);
    return encoder.beginComputePass({ timestampWrites: { querySet: this.queries, beginningOfPassWriteIndex: 2 * i,
                                                         endOfPassWriteIndex: 2 * i + 1 } });
  }

  // Reads the timestamps of the dispatches since the last call (after their submission) into this.seconds.
  async collect() {
    const n = this.labels.length;
    if (!n) return;
    const encoder = this.device.createCommandEncoder();
    encoder.resolveQuerySet(this.queries, 0, 2 * n, this.resolved, 0);
    encoder.copyBufferToBuffer(this.resolved, 0, this.readback, 0, 16 * n);
    this.device.queue.submit([encoder.finish()]);
    await this.readback.mapAsync(GPUMapMode.READ, 0, 16 * n);
    const ticks = new BigUint64Array(this.readback.getMappedRange(0, 16 * n).slice(0));
    this.readback.unmap();
    this.labels.forEach((label, i) => {
      const ns = Number(ticks[2 * i + 1] - ticks[2 * i]);          // WebGPU: nanoseconds
      if (!this.seconds.has(label)) this.seconds.set(label, []);
      this.seconds.get(label).push(Math.max(ns, 0) * 1e-9);
    });
    this.labels = [];
  }
}
