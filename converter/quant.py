"""Encoding and decoding the weight formats that format/weight_formats.py states (the blocks, their words and
the value of each element): how a matrix becomes the 32-bit words the kernels read, and back. The
quantisers are numpy, vectorised over blocks; `throughput()` measures them."""
from __future__ import annotations

import time

import numpy as np

from webmoe.format.weight_formats import fmt

from .errors import ConversionError
from .mxfp4 import E2M1, MxBlocks


# Elements quantised at a time: the quantisers' temporaries (a dozen arrays of this size) then stay in the
# CPU's caches; a whole 2048 x 1024 matrix at once ran 4-6x slower.
CHUNK_ELEMENTS = 1 << 16


def encode(a, dtype: str, name: str = "a weight") -> bytes:
    """The tensor's bytes in `dtype`, a whole number of blocks. `a` is a float array, or MxBlocks (MXFP4
    as a checkpoint stores it: copied as it is into mxfp4, decoded for any other format). NaN and
    infinite weights are refused: a package never runs with them."""
    if isinstance(a, MxBlocks):
        if dtype == "mxfp4":
            return _pack_mxfp4(a.flat_codes(), a.scales.reshape(-1), name).astype("<u4").tobytes()
        a = a.dequantize()
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    if not np.isfinite(a).all():
        raise ConversionError(f"{name} holds NaN or infinite values; the checkpoint is corrupt")
    f = fmt(dtype)
    if dtype == "f32":
        return a.astype("<f4").tobytes()
    if dtype == "f16":
        h = a.astype("<f2")
        if not np.isfinite(h).all():
            raise ConversionError(f"{name} overflows float16; convert with --dtype f32")
        raw = h.tobytes()
        return raw + b"\0" * (-len(raw) % 4)
    padded = np.zeros(-(-a.size // f.block) * f.block, np.float32)
    padded[:a.size] = a
    blocks, quantise = padded.reshape(-1, f.block), {"q8": _q8, "q4": _q4, "mxfp4": _mxfp4}[dtype]
    step = max(1, CHUNK_ELEMENTS // f.block)     # blocks are independent: a cache-sized run at a time
    return b"".join(quantise(blocks[i:i + step], name).astype("<u4").tobytes() for i in range(0, len(blocks), step))


def decode(raw, dtype: str, n: int) -> np.ndarray:
    """float32 [n]: the first n elements of encoded bytes (or uint32 words), as the kernels decode them."""
    f = fmt(dtype)
    w = np.frombuffer(raw, np.uint32) if isinstance(raw, (bytes, bytearray, memoryview)) else np.asarray(raw, np.uint32)
    if dtype == "f32":
        return w.view(np.float32)[:n].copy()
    if dtype == "f16":
        return w.view(np.float16)[:n].astype(np.float32)
    blocks = w[:-(-n // f.block) * f.words].reshape(-1, f.words)
    if dtype == "q8":
        q = blocks[:, :16].copy().view(np.int8).reshape(-1, 2, 32).astype(np.float32)
        d = _halves(blocks[:, 16])                                        # [blocks, 2]
        out = q * d[..., None]
    elif dtype == "q4":
        q = ((blocks[:, :32, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(-1, 8, 32)
        sc = blocks[:, 32:34].copy().view(np.uint8).astype(np.float32)     # [blocks, 8]
        mn = blocks[:, 34:36].copy().view(np.uint8).astype(np.float32)
        d = _halves(blocks[:, 36])
        out = (d[:, :1] * sc)[..., None] * q - (d[:, 1:] * mn)[..., None]
    else:
        codes = ((blocks[:, :16, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(-1, 4, 32)
        exps = blocks[:, 16:17].copy().view(np.uint8).astype(np.int32)    # [blocks, 4]
        out = np.ldexp(E2M1[codes], exps[..., None] - 127)
    return out.reshape(-1)[:n].astype(np.float32)


def _halves(words: np.ndarray) -> np.ndarray:
    """[n] words of two f16 -> float32 [n, 2] (low half first)."""
    return words.astype("<u4").view(np.float16).reshape(-1, 2).astype(np.float32)


def _f16_scale(v: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = v.astype(np.float16)
    if not np.isfinite(h).all():
        raise ConversionError(f"{name}: a block's scale overflows float16; convert it with --dtype f32")
    return h


def _pair(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two float16 arrays -> words holding lo in the low half."""
    return lo.view(np.uint16).astype(np.uint32) | (hi.view(np.uint16).astype(np.uint32) << 16)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    return np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)


def _q8(x: np.ndarray, name: str) -> np.ndarray:
    """[blocks, 64] float32 -> [blocks, 17] words: symmetric int8 per 32 elements, scale max|x| / 127."""
    sub = x.reshape(-1, 2, 32)
    d = _f16_scale(np.abs(sub).max(-1) / 127, name)                   # [blocks, 2]
    q = np.clip(np.rint(sub * _safe_inverse(d.astype(np.float32))[..., None]), -127, 127).astype(np.int8)
    out = np.empty((x.shape[0], 17), np.uint32)
    out[:, :16] = q.reshape(-1, 64).view(np.uint32)
    out[:, 16] = _pair(d[:, 0], d[:, 1])
    return out


def _fit_scale_min(sub: np.ndarray, rounds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per sub-block [n, 32]: a scale s >= 0 and minimum m >= 0 with sub ~ s * q - m, q in 0..15. Starts
    from the range (min clamped to <= 0, as the minimum is stored unsigned) and refines by least squares
    on the chosen q, keeping a refinement only where it lowers the squared error."""
    lo = np.minimum(sub.min(-1), 0.0)
    s = (sub.max(-1) - lo) / 15
    m = -lo

    def error(s, m):
        q = np.clip(np.rint((sub + m[:, None]) * _safe_inverse(s)[:, None]), 0, 15)
        return ((s[:, None] * q - m[:, None] - sub) ** 2).sum(-1), q

    err, q = error(s, m)
    for _ in range(rounds):
        qm, xm = q.mean(-1), sub.mean(-1)
        var = ((q - qm[:, None]) ** 2).mean(-1)
        s2 = np.where(var > 0, ((q - qm[:, None]) * (sub - xm[:, None])).mean(-1) / np.maximum(var, 1e-30), s)
        s2 = np.maximum(s2, 0.0)
        m2 = np.maximum(s2 * qm - xm, 0.0)
        err2, q2 = error(s2, m2)
        better = err2 < err
        s, m, err = np.where(better, s2, s), np.where(better, m2, m), np.where(better, err2, err)
        q = np.where(better[:, None], q2, q)
    return s, m


def _q4(x: np.ndarray, name: str) -> np.ndarray:
    """[blocks, 256] float32 -> [blocks, 37] words (see the module docstring)."""
    n = x.shape[0]
    sub = x.reshape(-1, 8, 32)
    s, m = (a.reshape(n, 8) for a in _fit_scale_min(sub.reshape(-1, 32)))
    d = _f16_scale(s.max(-1) / 255, name)
    dmin = _f16_scale(m.max(-1) / 255, name)
    sc = np.clip(np.rint(s * _safe_inverse(d.astype(np.float32))[:, None]), 0, 255)
    mn = np.clip(np.rint(m * _safe_inverse(dmin.astype(np.float32))[:, None]), 0, 255)
    scale = d.astype(np.float32)[:, None] * sc                           # [blocks, 8], as the kernel has it
    offset = dmin.astype(np.float32)[:, None] * mn
    q = np.clip(np.rint((sub + offset[..., None]) * _safe_inverse(scale)[..., None]), 0, 15).astype(np.uint32)
    out = np.empty((n, 37), np.uint32)
    out[:, :32] = (q.reshape(n, 32, 8) << (4 * np.arange(8, dtype=np.uint32))).sum(-1, dtype=np.uint32)
    out[:, 32:34] = sc.astype(np.uint8).view(np.uint32)
    out[:, 34:36] = mn.astype(np.uint8).view(np.uint32)
    out[:, 36] = _pair(d, dmin)
    return out


_E2M1_MIDPOINTS = (E2M1[:7] + E2M1[1:8]) / 2       # between neighbouring e2m1 magnitudes


def _mxfp4(x: np.ndarray, name: str) -> np.ndarray:
    """[blocks, 128] float32 -> [blocks, 17] words: the OCP MX rule, a block's exponent is
    floor(log2(max|x|)) - 2 (e2m1's largest exponent), values rounded to the nearest e2m1 code."""
    sub = x.reshape(-1, 32)
    amax = np.abs(sub).max(-1)
    e = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - 2, -127)
    e = np.clip(e, -127, 127).astype(np.int32)
    scaled = np.abs(sub) * np.ldexp(np.float32(1), -e)[:, None]
    mag = np.searchsorted(_E2M1_MIDPOINTS, scaled, side="left")           # nearest magnitude (ties: smaller)
    codes = (mag | np.where(sub < 0, 8, 0)).astype(np.uint8)
    return _pack_mxfp4(codes.reshape(-1), (e + 127).astype(np.uint8), name)


def _pack_mxfp4(codes: np.ndarray, exponents: np.ndarray, name: str) -> np.ndarray:
    """e2m1 codes [n] (uint8, one per element) and E8M0 exponents [n / 32] -> [blocks, 17] words."""
    if (exponents == 255).any():
        raise ConversionError(f"{name}: an MXFP4 block has the NaN exponent 255; the checkpoint is corrupt")
    if (exponents > 252).any():      # 6 * 2^126 is beyond float32
        raise ConversionError(f"{name}: an MXFP4 block's scale overflows float32; the checkpoint is corrupt")
    nblk = -(-exponents.size // 4)
    c = np.zeros(nblk * 128, np.uint8)
    c[:codes.size] = codes
    ex = np.full(nblk * 4, 0, np.uint8)
    ex[:exponents.size] = exponents
    out = np.empty((nblk, 17), np.uint32)
    shifts = 4 * np.arange(8, dtype=np.uint32)
    out[:, :16] = (c.reshape(nblk, 16, 8).astype(np.uint32) << shifts).sum(-1, dtype=np.uint32)
    out[:, 16] = ex.view(np.uint32)
    return out


def throughput(dtype: str, n: int = 1 << 22, seed: int = 0) -> float:
    """Million weights per second that encode() quantises into dtype on this machine (one run)."""
    a = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    t = time.perf_counter()
    encode(a, dtype)
    return n / (time.perf_counter() - t) / 1e6
