"""Dequantization goes through gguf-py; float encoding and chunked (threaded) encoding are exact."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from apr.formats.ggml import BF16, F16, GGML_TYPES, SUPPORTED_TYPES, dequantize_raw, encode_float, tensor_nbytes


def test_dequantize_uses_gguf_py_for_every_carried_block_type():
    rng = np.random.default_rng(0)
    for type_id in (t for t in SUPPORTED_TYPES if GGML_TYPES[t].is_quantized):
        raw = rng.integers(0, 256, size=tensor_nbytes(type_id, (4, 256)), dtype=np.uint8)
        ours = dequantize_raw(raw, type_id, (4, 256))
        reference = np.asarray(gguf_quants.dequantize(raw, GGMLQuantizationType(type_id)), dtype=np.float32)
        assert ours.shape == (4, 256) and np.array_equal(ours.reshape(-1), reference.reshape(-1), equal_nan=True)


def test_chunked_encoding_equals_whole_tensor_encoding(fixture_models, monkeypatch):
    from apr.formats import load_model, tensor_encode

    source = load_model(fixture_models["qwen2"]["gguf"]).tensors["model.embed_tokens.weight"]
    whole = np.concatenate(list(tensor_encode.iter_encoded(source, BF16)))
    monkeypatch.setattr(tensor_encode, "CHUNK_VALUES", 64 * 7)  # many 7-row chunks through the thread pool
    assert len(tensor_encode.row_chunks(source)) > 10
    chunked = np.concatenate(list(tensor_encode.iter_encoded(source, BF16)))
    assert chunked.tobytes() == whole.tobytes()


@pytest.mark.parametrize("type_id", [BF16, F16])
def test_half_encoding_matches_gguf_py_and_numpy(type_id):
    values = np.random.default_rng(1).standard_normal(4096).astype(np.float32) * 100
    values[:4] = [0.0, -0.0, 1e-40, 65504.0]
    ours = encode_float(values, type_id)
    if type_id == BF16:
        reference = np.asarray(gguf_quants.quantize(values, GGMLQuantizationType.BF16)).view(np.uint8).reshape(-1)
    else:
        reference = values.astype(np.float16).view(np.uint8)
    assert ours.tobytes() == reference.tobytes()
