"""The weight formats (converter/quant.py): numpy's decoding against blocks built by hand from the layout
docs/format.md states, MXFP4 against transformers' own dequantisation, and the quantisers' error against
bounds computed from each block's range. The kernels are checked against this decoding in
test_kernels.py, natively, and in test_browser.py, in Chromium."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers.integrations.mxfp4 import _convert_moe_packed_tensors

from webmoe.converter.errors import ConversionError
from webmoe.converter.mxfp4 import MxBlocks
from webmoe.converter.quant import decode, encode
from webmoe.format.weight_formats import FORMATS, encoded_size
from webmoe.converter.writer import whole_blocks

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def f16_bits(v: float) -> int:
    return int(np.array(v, np.float16).view(np.uint16))


def test_q8_block_layout():
    q = np.arange(-32, 32, dtype=np.int8)                       # element r holds r - 32
    words = np.zeros(17, np.uint32)
    words[:16] = q.view(np.uint32)
    words[16] = f16_bits(0.5) | f16_bits(-2.0) << 16           # elements 0-31 scale 0.5, 32-63 scale -2
    want = np.concatenate([0.5 * np.arange(-32, 0), -2.0 * np.arange(0, 32)])
    np.testing.assert_array_equal(decode(words, "q8", 64), want)


def test_q4_block_layout():
    r = np.arange(256)
    q = (r * 7) % 16                                           # element r holds (7 r) mod 16
    words = np.zeros(37, np.uint32)
    for i in range(256):
        words[i // 8] |= np.uint32(q[i] << (4 * (i % 8)))
    scales, mins = np.arange(1, 9), np.arange(10, 18)          # sub-block s: scale s + 1, minimum s + 10
    words[32:34] = scales.astype(np.uint8).view(np.uint32)
    words[34:36] = mins.astype(np.uint8).view(np.uint32)
    words[36] = f16_bits(0.25) | f16_bits(0.125) << 16         # d, dmin
    s = r // 32
    want = 0.25 * scales[s] * q - 0.125 * mins[s]
    np.testing.assert_array_equal(decode(words, "q4", 256), want)


def test_mxfp4_block_layout():
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]   # the OCP MX table
    codes = np.arange(128) % 16
    words = np.zeros(17, np.uint32)
    for i in range(128):
        words[i // 8] |= np.uint32(codes[i] << (4 * (i % 8)))
    exps = np.array([127, 130, 120, 127], np.uint8)            # block b of 32: scale 2^(exps[b] - 127)
    words[16] = exps.view(np.uint32)[0]
    want = np.array([e2m1[c] * 2.0 ** (int(exps[i // 32]) - 127) for i, c in enumerate(codes)])
    np.testing.assert_array_equal(decode(words, "mxfp4", 128), want)


def test_mxfp4_checkpoint_blocks_are_kept_and_decode_as_transformers():
    rng = np.random.default_rng(3)
    rows, groups = 6, 5
    blocks = rng.integers(0, 256, (rows, groups, 16), dtype=np.uint8)
    scales = rng.integers(110, 140, (rows, groups), dtype=np.uint8)
    ref = _convert_moe_packed_tensors(torch.from_numpy(blocks[None]), torch.from_numpy(scales[None]),
                                      dtype=torch.float32)[0].T.numpy()          # [rows, groups * 32]
    m = MxBlocks(blocks, scales)
    raw = encode(m, "mxfp4")
    assert len(raw) == encoded_size(m.shape, "mxfp4")
    np.testing.assert_array_equal(decode(raw, "mxfp4", rows * groups * 32).reshape(rows, -1), ref)
    np.testing.assert_array_equal(decode(encode(m, "f32"), "f32", ref.size).reshape(ref.shape), ref)   # expanded
    # columns on block boundaries, as an expert cut into pieces takes them
    np.testing.assert_array_equal(decode(encode(m[:, 32:96], "mxfp4"), "mxfp4", rows * 64).reshape(rows, 64),
                                  ref[:, 32:96])
    with pytest.raises(ValueError, match="do not fall on 32-value blocks"):
        m[:, 16:48]
    bad = scales.copy()
    bad[2, 1] = 255
    with pytest.raises(ConversionError, match="NaN exponent"):
        encode(MxBlocks(blocks, bad), "mxfp4")


blocks_of_weights = hnp.arrays(np.float32, st.integers(1, 700),
                               elements=st.floats(-1e4, 1e4, width=32).filter(lambda v: v == 0 or abs(v) > 1e-30)) | \
    st.tuples(st.integers(1, 900), st.sampled_from([1e-3, 1.0, 300.0]), st.integers(0, 2**31)).map(
        lambda a: (np.random.default_rng(a[2]).standard_normal(a[0]) * a[1]).astype(np.float32))


@PROPERTY
@given(blocks_of_weights)
def test_q8_error_is_within_half_a_step(x):
    """Each value within half its sub-block's step, max|x| / 127 (rounded to f16), of the original."""
    got = decode(encode(x, "q8"), "q8", x.size)
    pad = np.zeros(-x.size % 32, np.float32)
    sub = np.abs(np.concatenate([x, pad])).reshape(-1, 32)
    step = np.repeat(sub.max(-1) / 127, 32)[:x.size]
    assert (np.abs(got - x) <= step / 2 * (1 + 2e-3) + 1e-7).all()


@PROPERTY
@given(blocks_of_weights)
def test_q4_error_is_bounded_by_the_sub_block_ranges(x):
    """RMS error of each 256-value super-block under a step of its widest sub-block's range / 15, plus
    what the 8-bit scales and minimums add (the largest value / 255)."""
    got = decode(encode(x, "q4"), "q4", x.size)
    n = -(-x.size // 256) * 256
    xp, gp = np.zeros(n, np.float32), np.zeros(n, np.float32)
    xp[:x.size], gp[:x.size] = x, got
    sub = xp.reshape(-1, 8, 32)
    widest = (sub.max(-1) - np.minimum(sub.min(-1), 0)).max(-1) / 15
    rms = np.sqrt(((gp - xp).reshape(-1, 256) ** 2).mean(-1))
    assert (rms <= widest + 2 * np.abs(sub).reshape(-1, 256).max(-1) / 255 + 1e-6).all()


@PROPERTY
@given(blocks_of_weights)
def test_mxfp4_quantiser_rounds_to_the_nearest_code(x):
    """Each value decodes to the e2m1 value nearest to it under its block's power-of-two scale."""
    got = decode(encode(x, "mxfp4"), "mxfp4", x.size)
    pad = np.zeros(-x.size % 32, np.float32)
    amax = np.abs(np.concatenate([x, pad])).reshape(-1, 32).max(-1)
    scale = np.repeat(np.where(amax > 0, 2.0 ** (np.floor(np.log2(np.maximum(amax, 1e-38))) - 2), 0), 32)[:x.size]
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    scaled = np.abs(x) / np.where(scale > 0, scale, 1)
    want = grid[np.abs(scaled[:, None] - grid).argmin(-1)] * scale
    tie = np.abs(scaled[:, None] - (grid[:-1] + grid[1:]) / 2).min(-1) < 1e-5      # either neighbour is right
    assert (np.abs(got) == want)[~tie].all()
    assert (np.sign(got) * (want > 0) == np.sign(x) * (want > 0))[~tie].all()


def test_quantisers_refuse_non_finite_values_and_overflowing_scales():
    x = np.ones(100, np.float32)
    x[7] = np.nan
    for dtype in FORMATS:
        with pytest.raises(ConversionError, match="NaN or infinite"):
            encode(x, dtype, "tensor t")
    with pytest.raises(ConversionError, match="scale overflows float16"):
        encode(np.full(64, 1e10, np.float32), "q8", "tensor t")


@pytest.mark.parametrize("dtype", list(FORMATS))
def test_row_blocks_join_into_the_bytes_of_the_whole(dtype):
    """The converter encodes big tensors in row blocks of any size: the chunks it encodes are whole blocks
    of the format, so the bytes equal those of the whole tensor."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((37, 45)).astype(np.float32)
    rows = [a[0:3], a[3:4], a[4:20], a[20:37]]
    joined = b"".join(encode(c, dtype) for c in whole_blocks(rows, FORMATS[dtype].block))
    assert joined == encode(a, dtype)


@pytest.mark.parametrize("dtype", ["q8", "q4", "mxfp4"])
def test_quantising_a_run_at_a_time_writes_the_bytes_of_the_whole(dtype, monkeypatch):
    """encode() quantises CHUNK_ELEMENTS at a time (for the CPU's caches): the bytes are those of one call
    on the whole tensor, for sizes that are and are not multiples of the chunk and the block."""
    import webmoe.converter.quant as quant
    rng = np.random.default_rng(1)
    for n in (1, 255, 1 << 16, (1 << 17) + 1000, 3 << 16):
        x = (rng.standard_normal(n) * 0.05).astype(np.float32)
        chunked = encode(x, dtype)
        monkeypatch.setattr(quant, "CHUNK_ELEMENTS", 1 << 40)
        assert encode(x, dtype) == chunked
        monkeypatch.undo()


def test_experts_encoded_by_worker_processes_are_the_bytes_encoded_here(tmp_path, monkeypatch):
    """convert() hands q4 experts to a process pool when there are many (converter/expert_encoding.py):
    the package is byte for byte the one encoded in the converter's own process."""
    import json
    from transformers import MixtralForCausalLM
    from test_mixtral import mixtral
    from webmoe.converter import expert_encoding
    from webmoe.converter.convert import convert
    from tiny_models import save_checkpoint
    ckpt = save_checkpoint(MixtralForCausalLM, mixtral(num_local_experts=8), tmp_path / "ckpt")
    shards, pool = {}, expert_encoding.ProcessPoolExecutor
    monkeypatch.setattr(expert_encoding, "workers", lambda: 2)          # whatever this machine has
    for mode, threshold in (("here", 1 << 62), ("pool", 0)):
        monkeypatch.setattr(expert_encoding, "MIN_PARALLEL_WEIGHTS", threshold)
        calls = []
        monkeypatch.setattr(expert_encoding, "ProcessPoolExecutor", lambda *a, **k: calls.append(a) or pool(*a, **k))
        out = convert(ckpt, tmp_path / mode, dtype="q4", progress=False, stats=None)
        shards[mode] = [(s["file"], s["sha256"]) for s in json.loads((out / "manifest.json").read_text())["shards"]]
        assert bool(calls) == (mode == "pool") and (mode == "here" or calls[0][0] >= 2)
    assert shards["here"] == shards["pool"]
