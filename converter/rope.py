"""RoPE frequency tables, computed by the converter so that every scaling scheme is Python work only:
the kernel reads inv_freq [rot / 2] and multiplies cos/sin by attention_factor. The formulas follow the
published methods (and transformers' implementations of them): default, linear, YaRN, Llama 3, LongRoPE.

LongRoPE (Phi-3.5) switches from its short to its long factors once a sequence grows beyond
original_max_position_embeddings; webmoe uses the short factors and caps the context at that length
(`max_context`), which matches the reference exactly for every sequence it accepts."""
from __future__ import annotations

import math

import numpy as np

from .errors import ConversionError

SUPPORTED = ("default", "linear", "yarn", "llama3", "longrope")


def rope_parameters(c: dict) -> dict:
    """The RoPE settings whichever way config.json spells them (rope_parameters, rope_scaling, rope_theta)."""
    params = dict(c.get("rope_scaling") or {})
    params.update(c.get("rope_parameters") or {})
    params.setdefault("rope_theta", c.get("rope_theta") or 10000.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def rope_tables(c: dict, dim: int) -> tuple[np.ndarray, float]:
    """-> (inv_freq [dim / 2] float32, attention_factor) for a rotary dim `dim`."""
    p = rope_parameters(c)
    kind, base = p["rope_type"], float(p["rope_theta"])
    if kind not in SUPPORTED:
        raise ConversionError(f"rope type {kind!r} is not supported; supported: {', '.join(SUPPORTED)}")
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    pos_freqs = base ** exponents
    inv_freq = 1.0 / pos_freqs
    if kind == "linear":
        return (inv_freq / float(p["factor"])).astype(np.float32), 1.0
    if kind == "llama3":
        return _llama3(inv_freq, p).astype(np.float32), 1.0
    if kind == "yarn":
        return _yarn(pos_freqs, dim, base, p, c)
    if kind == "longrope":
        return _longrope(dim, base, p, c)
    return inv_freq.astype(np.float32), 1.0


def max_context(c: dict) -> int:
    """The longest sequence the package supports: max_position_embeddings, or for LongRoPE the original
    (pre-training) length its short factors are for."""
    p = rope_parameters(c)
    longest = int(c.get("max_position_embeddings") or 4096)
    if p["rope_type"] == "longrope":
        longest = min(longest, int(_original_max(p, c)))
    return longest


def _original_max(p: dict, c: dict) -> int:
    original = p.get("original_max_position_embeddings") or c.get("original_max_position_embeddings")
    if not isinstance(original, (int, float)) or original <= 1:
        raise ConversionError("longrope scaling needs original_max_position_embeddings > 1")
    return int(original)


def _longrope(dim: int, base: float, p: dict, c: dict) -> tuple[np.ndarray, float]:
    original = _original_max(p, c)
    factor = p.get("factor") or (c.get("max_position_embeddings") or original) / original
    attention_factor = p.get("attention_factor")
    if attention_factor is None:       # PhiMoE states its scale as short_mscale
        attention_factor = p.get("short_mscale")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    short = np.asarray(p.get("short_factor") or [], dtype=np.float32)
    if short.shape != (dim // 2,):
        raise ConversionError(f"longrope short_factor must have {dim // 2} values, got {short.size}")
    exponents = (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)).astype(np.float32)
    inv_freq = np.float32(1.0) / (short * np.power(np.float32(base), exponents, dtype=np.float32))
    return inv_freq.astype(np.float32), float(attention_factor)


def _yarn(pos_freqs: np.ndarray, dim: int, base: float, p: dict, c: dict) -> tuple[np.ndarray, float]:
    original = p.get("original_max_position_embeddings") or c.get("max_position_embeddings")
    factor = p.get("factor") or c["max_position_embeddings"] / original

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    # f32 like the reference, so the tables agree to the last bit
    pos32 = pos_freqs.astype(np.float32)
    extrapolation = (1.0 / pos32).astype(np.float32)
    interpolation = (1.0 / (np.float32(factor) * pos32)).astype(np.float32)
    keep = (1 - ramp).astype(np.float32)
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    return inv_freq.astype(np.float32), float(attention_factor)


def _llama3(inv_freq: np.ndarray, p: dict) -> np.ndarray:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    original = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)
