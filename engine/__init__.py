"""webmoe's native runtime: runs an RDRR package's plan with the shared WGSL kernels on wgpu-py."""
