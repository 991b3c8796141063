"""GPU time per dispatch from timestamp queries, for `webmoe speed --profile`. Each profiled dispatch runs
in a compute pass of its own that writes a timestamp at its start and end (WebGPU's timestamp-query
feature); the passes cost a little time of their own, so profiled runs are not the speed figures."""
from __future__ import annotations

import numpy as np
import wgpu

from .errors import DeviceError


class Profiler:
    def __init__(self, device, max_dispatches: int = 2048):     # WebGPU: at most 4096 queries per set
        if "timestamp-query" not in device.features:
            raise DeviceError("this adapter has no timestamp queries (WebGPU feature timestamp-query): "
                              "it cannot be profiled")
        self.device = device
        self.capacity = max_dispatches
        self.queries = device.create_query_set(type=wgpu.QueryType.timestamp, count=2 * max_dispatches)
        self.resolved = device.create_buffer(size=16 * max_dispatches,
                                             usage=wgpu.BufferUsage.QUERY_RESOLVE | wgpu.BufferUsage.COPY_SRC)
        self.labels: list[str] = []
        self.seconds: dict[str, list[float]] = {}

    def begin(self, encoder, label: str):
        """A compute pass for one dispatch, timed under `label`."""
        if len(self.labels) >= self.capacity:
            raise DeviceError(f"more than {self.capacity} dispatches between two Profiler.collect calls")
        i = len(self.labels)
        self.labels.append(label)
        return encoder.begin_compute_pass(timestamp_writes={"query_set": self.queries,
                                                             "beginning_of_pass_write_index": 2 * i,
                                                             "end_of_pass_write_index": 2 * i + 1})

    def collect(self) -> None:
        """Reads the timestamps of the dispatches since the last call (after their submission) into
        self.seconds, by label."""
        n = len(self.labels)
        if not n:
            return
        encoder = self.device.create_command_encoder()
        encoder.resolve_query_set(self.queries, 0, 2 * n, self.resolved, 0)
        self.device.queue.submit([encoder.finish()])
        ticks = np.frombuffer(self.device.queue.read_buffer(self.resolved, 0, 16 * n), np.uint64).reshape(n, 2)
        for label, (t0, t1) in zip(self.labels, ticks):
            self.seconds.setdefault(label, []).append(max(int(t1) - int(t0), 0) * 1e-9)   # WebGPU: nanoseconds
        self.labels = []
