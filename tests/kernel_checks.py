"""What every kernel test file shares (test_kernels*.py): random inputs and the comparison with the numpy
reference, whose largest error each run reports (tests/measured.py)."""
import numpy as np

from measured import record

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# relative to max(1, largest reference value): 1.44e-6 at most over 131 kernel outputs, 7x (was 1e-4); the
# router weights (after softmax or sigmoid), held to 1e-6, measured 1.48e-7 at most over 12, 6.8x (was 1e-5)
def close(a, b, tol=1e-5):
    scale = max(1.0, float(np.abs(b).max()))
    err = record(f"kernel outputs vs numpy ({tol:g})", tol, float(np.abs(a - b).max()) / scale)
    assert err <= tol, f"max abs err {np.abs(a - b).max()} (scale {scale})"


QUANTISED = ("q8", "q4", "mxfp4")
