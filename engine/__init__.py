"""webmoe's native runtime: runs an RDRR package's plan with the shared WGSL kernels on wgpu-py.
Only the runtime lives here; the server and the tools built on it are in webmoe.serve and webmoe.tools."""
__all__ = ["Engine"]


def __getattr__(name):
    if name == "Engine":
        from .engine import Engine
        return Engine
    raise AttributeError(f"module 'webmoe.engine' has no attribute {name!r}")
