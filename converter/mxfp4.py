"""MXFP4 (OCP microscaling FP4), as GPT-OSS checkpoints store their experts: each byte holds two e2m1
values (low nibble first) and each block of 32 values shares a power-of-two scale stored as a biased
exponent (value * 2^(scale - 127))."""
from __future__ import annotations

import numpy as np

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks [rows, G, 16] uint8, scales [rows, G] uint8 -> float32 [rows, G * 32]."""
    rows, groups, _ = blocks.shape
    values = np.stack([E2M1[blocks & 0x0F], E2M1[blocks >> 4]], axis=-1).reshape(rows, groups, 32)
    return np.ldexp(values, scales.astype(np.int32)[..., None] - 127).reshape(rows, groups * 32)
