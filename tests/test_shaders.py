"""The kernels' preprocessor (engine/shaders.py; web/shaders.js is its twin, compared in test_browser.py):
//!if chains with //!elif and //!else, nesting, negation, includes once, constants from the plan, and errors
that name the file and line."""
import pytest

from shader_cases import CASES, FILES
from webmoe.engine.errors import ShaderError
from webmoe.engine.shaders import load_kernel, preprocess


@pytest.mark.parametrize("kernel, defines, consts, expected", CASES)
def test_preprocessor(kernel, defines, consts, expected):
    run = lambda: preprocess(kernel, frozenset(defines), consts, read=FILES.__getitem__)   # noqa: E731
    if expected.startswith("error: "):
        with pytest.raises(ShaderError) as e:
            run()
        assert str(e.value) == expected[7:]
    else:
        assert run() == expected


@pytest.mark.parametrize("define", ["", "W_F16", "W_Q8", "W_Q4", "W_MXFP4"])
def test_each_weight_format_keeps_one_decoder(define):
    source = load_kernel("matmul", [define] if define else [], {"LANES": 64, "ROWS": 64, "TOKENS": 8, "RED_VALUES": 8}).source
    assert source.count("const W_BLOCK: u32") == 1 and source.count("fn w_step(") == 1
