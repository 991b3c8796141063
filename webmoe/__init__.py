"""webmoe: Mixture-of-Experts language models on WebGPU.

    from webmoe import Engine
    engine = Engine.load("demo/shakespeare-moe")
"""
__version__ = "0.2.0"
__all__ = ["Engine", "EngineOptions", "__version__"]


def __getattr__(name):
    # Engine imports wgpu; `webmoe --version` and the converter should not pay for that.
    if name == "Engine":
        from webmoe.engine.engine import Engine
        return Engine
    if name == "EngineOptions":
        from webmoe.engine.options import EngineOptions
        return EngineOptions
    raise AttributeError(f"module 'webmoe' has no attribute {name!r}")
