"""The weight formats a package stores matrices in: the 32-bit words the kernels read.

Every format is a sequence of blocks over the tensor's elements in row-major order (a block may run
across a row end when the row length is not a multiple of the block; in real checkpoints it always is).
A block of `block` elements takes `words` 32-bit words, so element i lives in block i // block: the
kernels decode any element from its index alone (shaders/weights.wgsl, selected by `define`).

    f32    1 element per word.
    f16    2 elements per word, element 2i in the low half.
    q8     64 elements in 17 words: words 0-15 hold int8 values (element r in byte r % 4 of word r // 4),
           word 16 two f16 scales, one per 32 elements (low half: elements 0-31). value = scale * q.
           8.5 bits per weight.
    q4     256 elements in 37 words, a super-block of 8 sub-blocks of 32: words 0-31 hold 4-bit values
           (element r in bits 4 * (r % 8) of word r // 8), words 32-33 an 8-bit scale per sub-block, words
           34-35 an 8-bit minimum per sub-block, word 36 the f16 super-scales d (low) and dmin (high).
           value = d * scale[s] * q - dmin * min[s] with s = r // 32. 4.625 bits per weight.
    mxfp4  128 elements in 17 words, 4 OCP MXFP4 blocks of 32: words 0-15 hold e2m1 codes (two per byte,
           low nibble first, as GPT-OSS checkpoints store them), word 16 the 4 blocks' E8M0 exponents
           (byte b for block b). value = e2m1(code) * 2^(exponent - 127). 4.25 bits per weight.

converter/quant.py encodes (and decodes) them; docs/format.md gives the reasoning behind the choice of
formats and the measured error."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str
    block: int              # elements per block
    words: int              # 32-bit words per block
    define: str | None      # the weights.wgsl define that selects its decoder (None: f32)

    @property
    def bits_per_weight(self) -> float:
        return 32 * self.words / self.block


FORMATS = {f.name: f for f in (Format("f32", 1, 1, None), Format("f16", 2, 1, "W_F16"),
                                Format("q8", 64, 17, "W_Q8"), Format("q4", 256, 37, "W_Q4"),
                                Format("mxfp4", 128, 17, "W_MXFP4"))}


def fmt(dtype: str) -> Format:
    try:
        return FORMATS[dtype]
    except KeyError:
        raise ValueError(f"unknown weight format {dtype!r} (one of {', '.join(FORMATS)})") from None


def encoded_size(shape, dtype: str) -> int:
    """Bytes of a tensor of this shape in this format (the last block padded with zeros)."""
    f = fmt(dtype)
    return -(-math.prod(shape) // f.block) * f.words * 4
