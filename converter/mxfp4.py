"""MXFP4 (OCP microscaling FP4), as GPT-OSS checkpoints store their experts: each byte holds two e2m1
values (low nibble first) and each block of 32 values shares a power-of-two scale stored as a biased
exponent (value * 2^(scale - 127))."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks [rows, G, 16] uint8, scales [rows, G] uint8 -> float32 [rows, G * 32]."""
    rows, groups, _ = blocks.shape
    values = np.stack([E2M1[blocks & 0x0F], E2M1[blocks >> 4]], axis=-1).reshape(rows, groups, 32)
    return np.ldexp(values, scales.astype(np.int32)[..., None] - 127).reshape(rows, groups * 32)


@dataclass
class MxBlocks:
    """A matrix [rows, G * 32] kept in MXFP4 as the checkpoint stores it, so that an mxfp4 package copies
    it without a round trip through floats. Slicing keeps whole blocks."""
    blocks: np.ndarray      # [rows, G, 16] uint8
    scales: np.ndarray      # [rows, G] uint8

    @property
    def shape(self) -> tuple[int, int]:
        return self.blocks.shape[0], self.blocks.shape[1] * 32

    def __getitem__(self, key) -> MxBlocks:
        """m[r0:r1] (rows) or m[:, c0:c1] (columns on block boundaries), as writer.expert_pieces cuts."""
        if isinstance(key, tuple):
            rows, cols = key
            stop = self.shape[1] if cols.stop is None else min(cols.stop, self.shape[1])
            return self[rows].columns(cols.start or 0, stop)
        return MxBlocks(self.blocks[key], self.scales[key])

    def columns(self, c0: int, c1: int) -> MxBlocks:
        if c0 % 32 or (c1 % 32 and c1 != self.shape[1]):
            raise ValueError(f"MXFP4 columns {c0}:{c1} do not fall on 32-value blocks")
        return MxBlocks(self.blocks[:, c0 // 32:-(-c1 // 32)], self.scales[:, c0 // 32:-(-c1 // 32)])

    def flat_codes(self) -> np.ndarray:
        """One e2m1 code per value, row-major [rows * G * 32] uint8."""
        return np.stack([self.blocks & 0x0F, self.blocks >> 4], axis=-1).reshape(-1)

    def dequantize(self) -> np.ndarray:
        return dequantize(self.blocks, self.scales)
