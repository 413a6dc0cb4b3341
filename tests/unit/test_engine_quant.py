"""GGML blocks -> int4/int8 kernel forms: exact against gguf-py's dequantization, and the kernels' matmuls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from apr.engine import quant
from apr.engine.weights import Int4Linear, Int8Linear

BLOCK_BYTES = {quant.Q4_0: (32, 18), quant.Q4_1: (32, 20), quant.Q4_K: (256, 144)}


def random_blocks(ggml_type: int, n: int, k: int, seed: int) -> np.ndarray:
    """Random but valid stored bytes: every nibble and 6-bit scale random, f16 scales small and finite."""
    rng = np.random.default_rng(seed)
    values, nbytes = BLOCK_BYTES[ggml_type]
    blocks = rng.integers(0, 256, size=(n, k // values, nbytes), dtype=np.uint8)
    header = 4 if ggml_type != quant.Q4_0 else 2
    scales = rng.uniform(0.001, 0.05, size=(n, k // values, header // 2)).astype(np.float16)
    blocks[..., :header] = scales.view(np.uint8).reshape(n, k // values, header)
    return blocks.reshape(n, -1)


@pytest.mark.parametrize("ggml_type", [quant.Q4_0, quant.Q4_1, quant.Q4_K])
def test_int4_groups_reproduce_gguf_dequantization_exactly(ggml_type):
    n, k = 48, 512
    raw = random_blocks(ggml_type, n, k, seed=ggml_type)
    expected = quants.dequantize(raw, GGMLQuantizationType(ggml_type)).reshape(n, k)
    groups = quant.int4_groups_from_raw(raw, ggml_type, (n, k))
    assert groups.q.min() >= 0 and groups.q.max() <= 15
    assert torch.equal(groups.dequantize(), torch.from_numpy(expected))


def test_int4_linear_matches_dense_matmul():
    n, k = 64, 512
    raw = random_blocks(quant.Q4_K, n, k, seed=1)
    groups = quant.int4_groups_from_raw(raw, quant.Q4_K, (n, k))
    bias = torch.randn(n)
    layer = Int4Linear.from_groups(groups, bias.bfloat16(), torch.device("cpu"))
    x = torch.randn(3, k)
    expected = x @ groups.dequantize().T + bias
    got = layer(x.bfloat16()).float()
    assert torch.allclose(got, expected, rtol=0.02, atol=0.02 * float(expected.abs().max()))


def test_int8_per_channel_error_is_small():
    w = torch.randn(32, 256)
    q, scale = quant.int8_per_channel(w)
    assert q.dtype == torch.int8
    assert float((q.float() * scale[:, None] - w).abs().max()) <= float(scale.max()) / 2 + 1e-6
    layer = Int8Linear.from_weight(w, None, torch.device("cpu"))
    x = torch.randn(2, 256)
    rel = (layer(x.bfloat16()).float() - x @ w.T).norm() / (x @ w.T).norm()
    assert rel < 0.02


def test_batched_rows_equal_single_rows_for_packed_and_bf16_kernels():
    """The batching guarantee rests on this: a row's result does not depend on the other rows."""
    n, k = 96, 512
    groups = quant.int4_groups_from_raw(random_blocks(quant.Q4_K, n, k, seed=2), quant.Q4_K, (n, k))
    layers = [
        Int4Linear.from_groups(groups, None, torch.device("cpu")),
        Int8Linear.from_weight(groups.dequantize(), None, torch.device("cpu")),
    ]
    dense = groups.dequantize().bfloat16()
    x = torch.randn(5, k).bfloat16()
    for layer in layers:
        full = layer(x)
        assert all(torch.equal(layer(x[i : i + 1]), full[i : i + 1]) for i in range(5))
    full = torch.nn.functional.linear(x, dense)
    assert all(torch.equal(torch.nn.functional.linear(x[i : i + 1], dense), full[i : i + 1]) for i in range(5))


@pytest.mark.parametrize("ggml_type,values,nbytes", [(quant.Q6_K, 256, 210), (quant.Q8_0, 32, 34)])
def test_torch_dequantization_matches_gguf(ggml_type, values, nbytes):
    rng = np.random.default_rng(ggml_type)
    n, k = 16, 512
    blocks = rng.integers(0, 256, size=(n, k // values, nbytes), dtype=np.uint8)
    d = rng.uniform(0.001, 0.05, size=(n, k // values, 1)).astype(np.float16).view(np.uint8)
    if ggml_type == quant.Q6_K:
        blocks[..., 208:210] = d
    else:
        blocks[..., 0:2] = d
    raw = blocks.reshape(n, -1)
    expected = quants.dequantize(raw, GGMLQuantizationType(ggml_type)).reshape(n, k)
    assert torch.equal(quant.dequantize_raw(raw, ggml_type, (n, k)), torch.from_numpy(expected))
