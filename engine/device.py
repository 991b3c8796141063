"""Picks a WebGPU adapter and opens a device with the limits webmoe needs.

Order of preference: a real GPU (discrete, then integrated), then CPU rasterisers such as Mesa lavapipe
or SwiftShader. `WEBMOE_ADAPTER` (or the `adapter` argument) picks by a case-insensitive substring of the
adapter's description, e.g. "llvmpipe", "swiftshader", "nvidia". SwiftShader is reached through Vulkan:
set VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json before the first import of wgpu.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

# wgpu's Vulkan loader warns, and some drivers fail, without a runtime dir (e.g. as root in CI).
if not os.environ.get("XDG_RUNTIME_DIR"):
    _runtime = os.path.join(tempfile.gettempdir(), f"webmoe-xdg-{os.getuid()}")
    os.makedirs(_runtime, mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = _runtime

import wgpu  # noqa: E402
from .errors import DeviceError

_TYPE_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "CPU": 3, "Unknown": 4}
_BACKEND_RANK = {"Vulkan": 0, "Metal": 0, "D3D12": 0, "OpenGL": 2}


UPLOAD_BATCH = 64 << 20       # bytes of buffer writes staged at most before the queue settles (Gpu.upload)


@dataclass
class Gpu:
    adapter: "wgpu.GPUAdapter"
    device: "wgpu.GPUDevice"
    description: str
    limits: dict
    # compiled compute pipelines, one per kernel variant (kernel, defines, consts): plan steps that differ
    # only in their buffers and params share one (the demo's 68 steps are 16 variants)
    pipelines: dict = field(default_factory=dict)
    binding_cap: int | None = None                # a lower storage binding limit the runtime keeps to (tests)
    subgroup_size: int = 0                        # lanes of the device's subgroups (0: none usable)
    staged: int = 0                               # bytes written to buffers since the queue last settled
    fence: "wgpu.GPUBuffer | None" = None

    def upload(self, buffer, offset: int, data) -> None:
        """queue.write_buffer, letting the queue settle every UPLOAD_BATCH bytes. Each write waits in a host
        staging copy until a submission runs it; a load that queued a whole package's weights before its
        first submission held all of them twice, and the allocator kept the doubled peak (issue 23: 8.2 GiB
        resident for a 3.95 GiB package)."""
        self.device.queue.write_buffer(buffer, offset, data)
        self.staged += memoryview(data).nbytes
        if self.staged >= UPLOAD_BATCH:
            self.settle()

    def settle(self) -> None:
        """Runs what was queued and waits for it, so that its staging copies are freed."""
        if self.fence is None:
            self.fence = self.device.create_buffer(size=4, usage=wgpu.BufferUsage.COPY_SRC, label="fence")
        self.device.queue.submit([])
        self.device.queue.read_buffer(self.fence, 0, 4)        # mapped once all earlier work has run
        self.staged = 0

    @property
    def max_binding(self) -> int:
        limit = self.limits["max-storage-buffer-binding-size"]
        return min(limit, self.binding_cap) if self.binding_cap else limit

    @property
    def max_buffer(self) -> int:
        return self.limits["max-buffer-size"]

    @property
    def is_cpu(self) -> bool:
        return is_cpu(self.adapter)

    @property
    def adapter_class(self) -> str:
        """The plan variant this adapter runs (format/plan_variants.py): "cpu" or "gpu"."""
        return "cpu" if self.is_cpu else "gpu"


def is_cpu(adapter) -> bool:
    """A CPU adapter (lavapipe, SwiftShader): its buffers live in host memory."""
    return adapter.info.get("adapter_type") == "CPU"


def describe(adapter) -> str:
    info = adapter.info
    parts = [info.get("device") or info.get("vendor") or "unknown", info.get("backend_type", ""),
             info.get("adapter_type", "")]
    return " / ".join(p for p in parts if p)


def pick_adapter(choice: str | None = None):
    choice = choice or os.environ.get("WEBMOE_ADAPTER") or None
    adapters = wgpu.gpu.enumerate_adapters_sync()
    if not adapters:
        raise DeviceError("no WebGPU adapter found; on Debian install mesa-vulkan-drivers (lavapipe) "
                          "or a GPU driver")
    if choice:
        matches = [a for a in adapters if choice.lower() in (describe(a) + " " + str(a.info)).lower()]
        if not matches:
            names = "; ".join(describe(a) for a in adapters)
            raise DeviceError(f"no adapter matches {choice!r}; available: {names}")
        adapters = matches
    return min(adapters, key=lambda a: (_TYPE_RANK.get(a.info.get("adapter_type"), 5),
                                        _BACKEND_RANK.get(a.info.get("backend_type"), 1)))


def open_gpu(choice: str | None = None, max_binding: int | None = None) -> Gpu:
    """Opens a device with the adapter's full storage binding and buffer sizes. max_binding lowers the
    binding limit the runtime keeps to (tests use it to exercise at small sizes what real sizes need)."""
    adapter = pick_adapter(choice)
    al = adapter.limits
    wanted = {
        "max-storage-buffer-binding-size": al["max-storage-buffer-binding-size"],
        "max-buffer-size": al["max-buffer-size"],
        "max-storage-buffers-per-shader-stage": min(al["max-storage-buffers-per-shader-stage"], 10),
        "max-compute-workgroup-storage-size": min(al["max-compute-workgroup-storage-size"], 16384),
    }
    features = [f for f in ("subgroup", "timestamp-query") if f in adapter.features]
    device = adapter.request_device_sync(required_limits=wanted, required_features=features, label="webmoe")
    gpu = Gpu(adapter, device, describe(adapter), dict(device.limits), binding_cap=max_binding)
    if "subgroup" in features and os.environ.get("WEBMOE_SUBGROUPS", "1") != "0":
        gpu.subgroup_size = probe_subgroup_size(device)
    return gpu


_PROBE = """
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_size) size: u32) {
    if (lid == 0u) { out[0] = size; }
}
"""


def probe_subgroup_size(device) -> int:
    """The subgroup size a compute pipeline gets, read back from a one-lane probe: adapters report only
    a range (lavapipe runs 8 lanes per subgroup with AVX2, SwiftShader 4, NVIDIA 32)."""
    out = device.create_buffer(size=16, usage=wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC)
    pipeline = device.create_compute_pipeline(layout="auto", compute={
        "module": device.create_shader_module(code=_PROBE), "entry_point": "main"})
    group = device.create_bind_group(layout=pipeline.get_bind_group_layout(0),
                                     entries=[{"binding": 0, "resource": {"buffer": out}}])
    encoder = device.create_command_encoder()
    cpass = encoder.begin_compute_pass()
    cpass.set_pipeline(pipeline)
    cpass.set_bind_group(0, group)
    cpass.dispatch_workgroups(1)
    cpass.end()
    device.queue.submit([encoder.finish()])
    return int.from_bytes(device.queue.read_buffer(out)[:4], "little")
