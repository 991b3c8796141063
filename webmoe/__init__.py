"""webmoe: Mixture-of-Experts language models on WebGPU."""
__version__ = "0.1.0"
