"""The block formats' kernels in whole models, held to f32's bound: each family's q8 and q4 packages against
transformers run on the package's own weights, decoded by numpy (converter/quant.py's decode, itself checked
against blocks built by hand from docs/format.md's layout in test_quant.py). Quantising changes the weights,
so against the original model the logits move by the quantisation error; against the weights the package
holds, only the kernels' arithmetic is left. What quantising costs is measured apart
(test_quantised_models.py, docs/benchmarks.md)."""
import zlib

import numpy as np
import pytest
import torch

from package_weights import dequantised_checkpoint, package_weights
from parity import assert_logits_close, reference_logits
from test_quantised_models import FAMILIES
from tiny_models import save_checkpoint
from webmoe import Engine
from webmoe.converter.convert import convert

# GPT-OSS stores its experts transposed and interleaved (and keeps MXFP4 checkpoints in MXFP4, whose kernel
# test_quantised_models.py and test_kernels.py check); the other families share transformers' fused layout
STANDARD = [c for c in FAMILIES if c != "gpt_oss"]


@pytest.mark.parametrize("dtype", ["q8", "q4"])
@pytest.mark.parametrize("case", STANDARD)
def test_block_format_kernels_match_transformers_on_the_packages_weights(tmp_path, case, dtype):
    model_cls, config = FAMILIES[case]
    ckpt = save_checkpoint(model_cls, config, tmp_path / "ckpt")
    pkg = convert(ckpt, tmp_path / dtype, dtype=dtype, progress=False)
    held = dequantised_checkpoint(ckpt, tmp_path / "held", *package_weights(pkg))
    model = model_cls.from_pretrained(held, dtype=torch.float32, experts_implementation="eager").eval()
    ids = np.random.default_rng(zlib.crc32(case.encode())).integers(3, 400, 40).tolist()
    assert_logits_close(Engine.load(pkg).logits(ids), reference_logits(model, ids), "f32",
                        bound=f"logits {dtype} vs transformers on the package's weights")
