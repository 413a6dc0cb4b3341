"""A NaN or Inf never turns finite on the fast path: the native products carry it, so a NaN weight shows in logits.

The int8 quantization of activations took each block's max with max_ps, which drops a NaN lane, and clamped
the NaN to -127: with one NaN in a norm weight the fast engine's replies and log-likelihoods stayed finite
(seen on gemma3:270m in the self-test), while the exact engine's logits were NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_engine_native import LAYOUT_IDS, LAYOUT_MAKERS

from apr.engine import native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("make", LAYOUT_MAKERS, ids=LAYOUT_IDS)
def test_a_non_finite_activation_makes_its_row_non_finite(make, bad):
    parts, _ = make(64, 256, seed=7)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(3))
    x[1, 100] = bad  # a full block of 32
    x[2, 255] = bad  # the last block
    y = native.PackedLinear(parts)(x, None)
    assert torch.isfinite(y[0]).all()
    assert not torch.isfinite(y[1]).any() and not torch.isfinite(y[2]).any()


def test_a_nan_norm_weight_reaches_the_fast_engines_logits(tmp_path):
    """Matrices as Q8_0 (the q8 layout, whose products lost the NaN; the fixture's Q4_K ones carried it)."""
    from gguf import GGMLQuantizationType, quants

    from apr.engine.api import load_engine
    from apr.formats.fixtures import build_fixture_model
    from apr.formats.gguf_write import write_gguf
    from apr.qa.selftest.defects import defect
    from apr.qa.selftest.gguf_edit import GgufTensor, read_gguf_copy, write_gguf_copy

    copy = read_gguf_copy(write_gguf(build_fixture_model("gemma3"), tmp_path / "gemma3.gguf"))
    defect("nan-norm").plant(copy)
    for name, tensor in copy.tensors.items():
        if tensor.data.dtype == np.uint8:
            values = quants.dequantize(tensor.data, GGMLQuantizationType(tensor.ggml_type))
            copy.tensors[name] = GgufTensor(quants.quantize(values, GGMLQuantizationType.Q8_0), 8)
    engine = load_engine(write_gguf_copy(copy, tmp_path / "nan.gguf"), device="cpu", pack_cache=False)
    assert engine.transformer.native_stack is not None  # the fast native path, not the exact one
    logits = engine.logits([5, 6, 7, 8])
    assert not torch.isfinite(logits).all()
