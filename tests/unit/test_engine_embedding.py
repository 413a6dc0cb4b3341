"""The embedding kept as stored GGML blocks (weights.BlockRows): exact rows, and used where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apr.engine import load_engine, quant
from apr.engine.weights import BlockRows
from test_engine_native import q4k_bytes, q6k_bytes


def q8_0_bytes(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, k // 32, 34), dtype=np.uint8)
    blocks[..., :2] = rng.uniform(0.001, 0.01, size=(n, k // 32, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(n, -1)


@pytest.mark.parametrize("ggml_type", [quant.Q4_K, quant.Q6_K, quant.Q8_0])
def test_looked_up_rows_equal_the_dense_dequantization_exactly(ggml_type):
    from gguf import GGMLQuantizationType, quants

    n, k = 40, 512
    raw = {quant.Q4_K: lambda: q4k_bytes(n, k, 3)[0], quant.Q6_K: lambda: q6k_bytes(n, k, 3),
           quant.Q8_0: lambda: q8_0_bytes(n, k, 3)}[ggml_type]()
    dense = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType(ggml_type)).reshape(n, k).copy())
    rows = BlockRows(raw, ggml_type, (n, k), torch.float32)
    ids = torch.tensor([[7, 0, 39], [7, 12, 12]])
    got = rows[ids]
    assert got.shape == (2, 3, k) and got.dtype == torch.float32
    assert torch.equal(got, dense[ids])


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
