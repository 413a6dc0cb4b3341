"""The embedding kept as stored GGML blocks (weights.BlockRows): exact rows, and used where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine_native import q4k_bytes, q6k_bytes

from apr.engine import load_engine, native, quant
from apr.engine.weights import BlockRows


def q8_0_bytes(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, k // 32, 34), dtype=np.uint8)
    blocks[..., :2] = rng.uniform(0.001, 0.01, size=(n, k // 32, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(n, -1)


@pytest.mark.parametrize("ggml_type", [quant.Q4_K, quant.Q6_K, quant.Q8_0])
def test_looked_up_rows_equal_the_dense_dequantization_exactly(ggml_type):
    from gguf import GGMLQuantizationType, quants

    n, k = 40, 512
    raw = {
        quant.Q4_K: lambda: q4k_bytes(n, k, 3)[0],
        quant.Q6_K: lambda: q6k_bytes(n, k, 3),
        quant.Q8_0: lambda: q8_0_bytes(n, k, 3),
    }[ggml_type]()
    dense = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType(ggml_type)).reshape(n, k).copy())
    rows = BlockRows(raw, ggml_type, (n, k), torch.float32)
    ids = torch.tensor([[7, 0, 39], [7, 12, 12]])
    got = rows[ids]
    assert got.shape == (2, 3, k) and got.dtype == torch.float32
    assert torch.equal(got, dense[ids])


def q4_bytes(n: int, k: int, seed: int, *, with_min: bool) -> np.ndarray:
    """Random Q4_0 (d, 16 nibble bytes) or Q4_1 (d, m, 16 bytes) blocks; scales of both signs."""
    rng = np.random.default_rng(seed)
    head = 4 if with_min else 2
    blocks = rng.integers(0, 256, size=(n, k // 32, head + 16), dtype=np.uint8)
    scales = rng.uniform(-0.02, 0.02, size=(n, k // 32, head // 2)).astype(np.float16)
    blocks[..., :head] = scales.view(np.uint8)
    return blocks.reshape(n, -1)


RAW_BYTES = {
    quant.Q4_0: lambda n, k: q4_bytes(n, k, 5, with_min=False),
    quant.Q4_1: lambda n, k: q4_bytes(n, k, 5, with_min=True),
    quant.Q8_0: lambda n, k: q8_0_bytes(n, k, 5),
    quant.Q4_K: lambda n, k: q4k_bytes(n, k, 5)[0],
    quant.Q6_K: lambda n, k: q6k_bytes(n, k, 5),
}


@pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")
@pytest.mark.parametrize("ggml_type", sorted(RAW_BYTES))
def test_native_rows_are_bit_identical_to_the_torch_dequantization(ggml_type):
    n, k = 48, 768
    raw = RAW_BYTES[ggml_type](n, k)
    ids = torch.tensor([0, 47, 13, 13, 30])
    expected = quant.dequantize_raw(raw[ids.numpy()], ggml_type, (len(ids), k))
    got = native.dequantize_rows(raw, ggml_type, k, ids)
    # Compared as bits: equal floats could still differ in the sign of a zero.
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))
    assert BlockRows(raw, ggml_type, (n, k), torch.float32).native


@pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")
def test_native_rows_refuse_ids_outside_the_matrix_and_mismatched_rows():
    raw = q8_0_bytes(4, 64, 1)
    with pytest.raises(IndexError, match="outside 0..3"):
        native.dequantize_rows(raw, quant.Q8_0, 64, torch.tensor([1, 4]))
    with pytest.raises(IndexError):
        native.dequantize_rows(raw, quant.Q8_0, 64, torch.tensor([-1]))
    with pytest.raises(ValueError, match="bytes a row"):
        native.dequantize_rows(raw, quant.Q8_0, 96, torch.tensor([0]))  # 3 blocks a row, 2 stored
    with pytest.raises(ValueError, match="GGML type"):
        native.dequantize_rows(raw, 0, 64, torch.tensor([0]))


def test_a_type_without_a_row_dequantization_is_refused():
    with pytest.raises(ValueError):
        BlockRows(np.zeros((4, 64), np.uint8), 0, (4, 16), torch.float32)  # F32 stays dense


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_quantized_checkpoints_keep_their_embedding_as_blocks_and_decode_the_same(fixture_models, arch):
    """GGUF (quantized embedding; gemma3's tied to the head) through the native kernels: BlockRows, and the
    same logits as the fp32 reference path, which keeps the embedding dense."""
    path = fixture_models[arch]["gguf"]
    native_engine = load_engine(path, device="cpu", compile=False, pack_cache=False)
    reference = load_engine(path, device="cpu", dtype="fp32", compile=False, pack_cache=False)
    assert isinstance(native_engine.transformer.embedding, BlockRows)
    assert isinstance(reference.transformer.embedding, torch.Tensor)
    ids = torch.tensor([5, 17, 3, 99, 42])
    with torch.inference_mode():
        assert torch.equal(native_engine.transformer.embed(ids), reference.transformer.embed(ids))
