"""Conventions checked against gguf-py and transformers: names, reversed dims, rope permutation, Gemma +1 norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gguf_quants

from apr.formats import load_model, names
from apr.formats.convert import convert
from apr.formats.fixtures import FIXTURE_ARCHS
from apr.formats.tensor_source import rope_permutation


def _gguf_py_tensors(path):
    return {t.name: t for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_safetensors_f32_equals_gguf_py_dequantize_bit_for_bit(fixture_models, tmp_path, arch):
    src = fixture_models[arch]["gguf"]
    convert(src, "safetensors", tmp_path / "hf", dtype="f32")
    ours = load_model(tmp_path / "hf")
    config = ours.config
    for gguf_name, tensor in _gguf_py_tensors(src).items():
        reference = gguf_quants.dequantize(tensor.data, GGMLQuantizationType(int(tensor.tensor_type)))
        reference = np.asarray(reference, dtype=np.float32).reshape(tuple(reversed([int(d) for d in tensor.shape])))
        hf_name = names.gguf_to_hf(arch, gguf_name)
        if names.is_rope_permuted(arch, hf_name):
            heads = config.num_heads if "q_proj" in hf_name else config.num_kv_heads
            reference = reference[np.argsort(rope_permutation(reference.shape[0], heads))]
        if arch == "gemma3" and names.is_norm_weight(hf_name):
            reference = reference - np.float32(1.0)
        got = ours.tensors[hf_name].dequantize().numpy()
        assert got.dtype == np.float32 and got.shape == reference.shape, hf_name
        assert got.tobytes() == reference.tobytes(), hf_name


def test_gguf_dims_are_reversed_logical_shapes(fixture_models):
    path = fixture_models["qwen2"]["gguf"]
    raw = _gguf_py_tensors(path)
    model = load_model(path)
    for gguf_name, tensor in raw.items():
        logical = model.tensors[names.gguf_to_hf("qwen2", gguf_name)].info.shape
        assert tuple(int(d) for d in tensor.shape) == tuple(reversed(logical))
    assert model.tensors["model.layers.0.self_attn.k_proj.weight"].info.shape == (32, 64)  # [kv*hd, hidden]


def test_llama_q_k_rows_are_stored_permuted_like_llama_cpp(fixture_models):
    """The GGUF file holds llama.cpp's permute(W_hf); raw() returns HF row order (also for Q4_1 rows)."""
    path = fixture_models["llama"]["gguf"]
    model = load_model(path)
    stored = _gguf_py_tensors(path)
    q = model.tensors["model.layers.0.self_attn.q_proj.weight"]
    hf_rows = q.raw()
    n_head = model.config.num_heads
    expected_file_rows = hf_rows.reshape(n_head, 2, -1, hf_rows.shape[1]).swapaxes(1, 2).reshape(hf_rows.shape)
    assert np.array_equal(np.asarray(stored["blk.0.attn_q.weight"].data).reshape(hf_rows.shape), expected_file_rows)
    assert not np.array_equal(expected_file_rows, hf_rows)
    k = model.tensors["model.layers.0.self_attn.k_proj.weight"]
    assert np.array_equal(
        np.asarray(stored["blk.0.attn_k.weight"].data).reshape(k.raw().shape),
        k.raw()[rope_permutation(k.raw().shape[0], model.config.num_kv_heads)],
    )


def test_qwen2_and_gemma3_are_not_permuted(fixture_models):
    for arch in ("qwen2", "gemma3"):
        path = fixture_models[arch]["gguf"]
        model = load_model(path)
        stored = _gguf_py_tensors(path)["blk.0.attn_q.weight"]
        raw = model.tensors["model.layers.0.self_attn.q_proj.weight"].raw()
        assert np.array_equal(np.asarray(stored.data).reshape(raw.shape), raw)


def test_gemma3_norms_are_stored_plus_one_in_gguf(fixture_models):
    path = fixture_models["gemma3"]["gguf"]
    stored = _gguf_py_tensors(path)
    model = load_model(path)
    for gguf_name, hf_name in (
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
        ("blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ):
        source = model.tensors[hf_name]
        assert source.info.value_offset == 1.0
        assert np.array_equal(np.asarray(stored[gguf_name].data), source.dequantize().numpy() + np.float32(1))
    assert model.config.norm_weight_offset == 1.0
    assert model.tensors["model.layers.0.self_attn.q_proj.weight"].info.value_offset == 0.0


def test_apr_keeps_gemma_norm_bytes_and_records_the_offset(fixture_models, tmp_path):
    src = fixture_models["gemma3"]["gguf"]
    convert(src, "apr", tmp_path / "m.apr")
    gguf_model, apr_model = load_model(src), load_model(tmp_path / "m.apr")
    name = "model.layers.2.post_feedforward_layernorm.weight"
    assert np.array_equal(apr_model.tensors[name].raw(), gguf_model.tensors[name].raw())
    assert apr_model.tensors[name].info.value_offset == 1.0
    assert apr_model.metadata["apr.value_offsets"][name] == 1.0


def test_name_map_is_a_bijection(fixture_models):
    for arch in FIXTURE_ARCHS:
        model = load_model(fixture_models[arch]["gguf"])
        gguf_names = [names.hf_to_gguf(arch, n) for n in model.tensors]
        assert len(set(gguf_names)) == len(gguf_names) and None not in gguf_names
        assert [names.gguf_to_hf(arch, g) for g in gguf_names] == list(model.tensors)
    assert names.hf_to_gguf("gemma3", "model.layers.3.pre_feedforward_layernorm.weight") == "blk.3.ffn_norm.weight"
    assert names.hf_to_gguf("llama", "model.layers.3.post_attention_layernorm.weight") == "blk.3.ffn_norm.weight"
    assert names.gguf_to_hf("llama", "blk.0.attn_q_norm.weight") is None


def test_tied_embeddings_have_no_output_tensor(fixture_models):
    llama = load_model(fixture_models["llama"]["gguf"])
    assert llama.config.tie_word_embeddings and "lm_head.weight" not in llama.tensors
    qwen = load_model(fixture_models["qwen2"]["gguf"])
    assert not qwen.config.tie_word_embeddings and "lm_head.weight" in qwen.tensors


def test_qwen2_biases_survive_every_format(fixture_models):
    for fmt, path in fixture_models["qwen2"].items():
        model = load_model(path)
        for kind in ("q", "k", "v"):
            bias = model.tensors[f"model.layers.1.self_attn.{kind}_proj.bias"]
            assert bias.info.ggml_type == 0 and torch.count_nonzero(bias.dequantize()) > 0, fmt
