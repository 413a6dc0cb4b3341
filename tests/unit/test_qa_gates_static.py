"""Tensor contract, metadata plausibility and structure gates on in-memory fixture models, good and broken."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from apr.qa.axes import Format
from apr.qa.evidence import Outcome
from apr.qa.gates.contract import contract_checks, shapes_check, tokenizer_check, values_check
from apr.qa.gates.structure import embedding_check, metadata_checks, norms_check, qkv_bias_check, rope_check

GGUF = Format.GGUF


@pytest.fixture(scope="module")
def models():
    from apr.formats.fixtures import build_fixture_model

    return {arch: build_fixture_model(arch) for arch in ("qwen2", "llama", "gemma3")}


def fresh(arch: str):
    from apr.formats.fixtures import build_fixture_model

    return build_fixture_model(arch)


def set_tensor(model, name: str, values: np.ndarray, type_id: int | None = None) -> None:
    from apr.formats.ggml import F32, encode_float, tensor_nbytes
    from apr.formats.model import TensorInfo
    from apr.formats.tensor_source import StoredTensor

    type_id = F32 if type_id is None else type_id
    shape = tuple(values.shape)
    data = encode_float(values.astype(np.float32), type_id)
    model.tensors[name] = StoredTensor(TensorInfo(name, shape, type_id, tensor_nbytes(type_id, shape)), lambda: data)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma3"])
def test_every_fixture_passes_every_static_check(models, arch):
    from apr.qa.gates.structure import structure_checks

    model = models[arch]
    checks = contract_checks(model, GGUF) + metadata_checks(model, GGUF) + structure_checks(model, GGUF)
    assert checks and all(c.outcome is Outcome.CORROBORATED for c in checks), [
        c.reason for c in checks if c.outcome is not Outcome.CORROBORATED
    ]
    assert all(c.n_compared >= 1 for c in checks)


def test_missing_tensor_and_wrong_shape_break_the_shape_contract():
    model = fresh("llama")
    del model.tensors["model.layers.1.mlp.up_proj.weight"]
    name = "model.layers.0.self_attn.o_proj.weight"
    set_tensor(model, name, np.ones((32, 64)))
    check = shapes_check(model, GGUF)
    assert check.outcome is Outcome.FALSIFIED
    assert "up_proj" in check.reason and "o_proj" in check.reason


def test_nan_in_a_float_tensor_and_a_nan_block_scale_are_found():
    model = fresh("qwen2")
    bad = np.ones((64,), dtype=np.float32)
    bad[3] = np.nan
    set_tensor(model, "model.norm.weight", bad)
    assert "model.norm.weight" in values_check(model, GGUF).reason
    model = fresh("qwen2")
    source = model.tensors["model.embed_tokens.weight"]  # Q8_0: f16 scale d leads each 34-byte block
    raw = np.array(source.raw()).copy()
    raw[0, 0:2] = np.array([np.inf], dtype=np.float16).view(np.uint8)
    source._load = lambda r=raw: r.reshape(-1)
    check = values_check(model, GGUF)
    assert check.outcome is Outcome.FALSIFIED and "embed_tokens" in check.reason


def test_an_all_zero_weight_matrix_breaks_the_value_contract():
    model = fresh("llama")
    set_tensor(model, "model.layers.0.mlp.gate_proj.weight", np.zeros((256, 64)))
    check = values_check(model, GGUF)
    assert check.outcome is Outcome.FALSIFIED and "gate_proj" in check.reason


def test_byte_size_disagreeing_with_shape_is_found():
    from apr.formats.model import TensorInfo

    model = fresh("llama")
    source = model.tensors["model.norm.weight"]
    source.info = TensorInfo(source.info.name, source.info.shape, source.info.ggml_type, source.info.nbytes + 4)
    failing = [c for c in contract_checks(model, GGUF) if c.outcome is Outcome.FALSIFIED]
    assert [c.check for c in failing] == ["byte-sizes"]


def test_a_quantized_norm_is_a_dtype_inconsistency():
    from gguf import GGMLQuantizationType
    from gguf import quants as gguf_quants

    from apr.formats.ggml import Q8_0, tensor_nbytes
    from apr.formats.model import TensorInfo
    from apr.formats.tensor_source import StoredTensor

    model = fresh("llama")
    blocks = np.asarray(gguf_quants.quantize(np.ones((1, 64), np.float32), GGMLQuantizationType.Q8_0), np.uint8)
    info = TensorInfo("model.norm.weight", (64,), Q8_0, tensor_nbytes(Q8_0, (64,)))
    model.tensors["model.norm.weight"] = StoredTensor(info, lambda b=blocks: b.reshape(-1))
    failing = {c.check for c in contract_checks(model, GGUF) if c.outcome is Outcome.FALSIFIED}
    assert failing == {"dtypes"}


def test_a_tensor_whose_bytes_cannot_be_read_is_a_failure_not_a_crash():
    from apr.formats.model import TensorInfo

    model = fresh("llama")
    source = model.tensors["model.norm.weight"]
    source.info = TensorInfo(source.info.name, (128,), source.info.ggml_type, source.info.nbytes)
    check = values_check(model, GGUF)
    assert check.outcome is Outcome.FALSIFIED and "unreadable" in check.reason


def test_tokenizer_with_more_ids_than_embedding_rows_is_unusable(models):
    model = fresh("qwen2")
    model.config = dataclasses.replace(
        model.config,
        vocab_size=model.tokenizer.vocab_size - 10,
        eos_token_ids=(0,),
        bos_token_id=None,
        pad_token_id=None,
    )
    check = tokenizer_check(model, GGUF)
    assert check.outcome is Outcome.FALSIFIED and "more than" in check.reason


@pytest.mark.parametrize(
    "arch,theta,ok",
    [
        ("qwen2", 1e6, True),
        ("qwen2", 1e4, False),
        ("llama", 1e5, True),
        ("llama", 50.0, False),
        ("gemma3", 1e6, True),
        ("gemma3", 1e4, False),
    ],
)
def test_rope_theta_bounds_per_architecture(arch, theta, ok):
    model = fresh(arch)
    model.config = dataclasses.replace(model.config, rope_theta=theta)
    assert (rope_check(model, GGUF).outcome is Outcome.CORROBORATED) is ok


def test_qkv_bias_check_applies_to_qwen2_only_and_catches_a_zero_bias(models):
    assert qkv_bias_check(models["llama"], GGUF) is None  # no check planned: nothing recorded as passed
    model = fresh("qwen2")
    set_tensor(model, "model.layers.0.self_attn.v_proj.bias", np.zeros((32,)))
    check = qkv_bias_check(model, GGUF)
    assert check.outcome is Outcome.FALSIFIED and "v_proj.bias" in check.reason


def test_gemma_norms_are_judged_as_applied_one_plus_w():
    model = fresh("gemma3")
    shape = model.tensors["model.norm.weight"].info.shape
    set_tensor(model, "model.norm.weight", np.zeros(shape))  # w = 0 means the norm multiplies by 1: fine
    assert norms_check(model, GGUF).outcome is Outcome.CORROBORATED
    set_tensor(model, "model.norm.weight", -np.ones(shape))  # 1 + w = 0 wipes the activations
    assert norms_check(model, GGUF).outcome is Outcome.FALSIFIED


def test_a_transposed_embedding_is_named_as_such():
    model = fresh("qwen2")
    name = "model.embed_tokens.weight"
    values = model.tensors[name].dequantize().numpy()
    set_tensor(model, name, values.T.copy())
    check = embedding_check(model, GGUF)
    assert check.outcome is Outcome.FALSIFIED and "(transposed)" in check.reason


def test_metadata_bounds_catch_an_absurd_eps():
    model = fresh("llama")
    model.config = dataclasses.replace(model.config, rms_norm_eps=0.5)
    bounds = [c for c in metadata_checks(model, GGUF) if c.check == "config-bounds"][0]
    assert bounds.outcome is Outcome.FALSIFIED and "rms_norm_eps" in bounds.reason
