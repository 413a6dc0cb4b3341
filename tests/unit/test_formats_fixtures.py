"""Fixture models: every arch in every format, identical tensors and configs across formats, deterministic."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from apr.formats import load_model
from apr.formats.fixtures import FIXTURE_ARCHS, build_fixture_model
from apr.formats.ggml import Q4_1, Q4_K, Q6_K, Q8_0


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_every_format_holds_the_same_model(fixture_models, arch):
    loaded = {fmt: load_model(path) for fmt, path in fixture_models[arch].items()}
    assert {"gguf", "safetensors"} <= set(loaded)
    reference = loaded["gguf"]
    for fmt, model in loaded.items():
        assert model.config == reference.config, fmt
        assert set(model.tensors) == set(reference.tensors), fmt
        for name, source in reference.tensors.items():
            assert torch.equal(model.tensors[name].dequantize(), source.dequantize()), (fmt, name)
        text = "Hello world, def f(x): return 42 你好"
        assert model.tokenizer.encode(text) == reference.tokenizer.encode(text), fmt


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_fixture_exercises_quantized_types(fixture_models, arch):
    model = load_model(fixture_models[arch]["gguf"])
    kinds = {source.info.ggml_type for source in model.tensors.values()}
    assert {Q8_0, Q4_1, Q4_K, Q6_K} <= kinds


def test_fixture_architecture_features(fixture_models):
    qwen = load_model(fixture_models["qwen2"]["gguf"])
    assert qwen.config.attention_bias and not qwen.config.tie_word_embeddings
    bias = qwen.tensors["model.layers.0.self_attn.q_proj.bias"].dequantize()
    assert bias.abs().mean() > 0.01
    gemma = load_model(fixture_models["gemma3"]["gguf"]).config
    assert gemma.qk_norm and gemma.norm_weight_offset == 1.0 and gemma.hidden_activation == "gelu_tanh"
    assert set(gemma.layer_kinds) == {"sliding", "full"} and gemma.sliding_window
    llama = load_model(fixture_models["llama"]["gguf"]).config
    assert llama.tie_word_embeddings and llama.num_kv_heads < llama.num_heads


def test_fixture_build_is_deterministic():
    first, second = build_fixture_model("llama"), build_fixture_model("llama")
    for name, source in first.tensors.items():
        assert (
            hashlib.sha256(source.raw().tobytes()).digest()
            == hashlib.sha256(second.tensors[name].raw().tobytes()).digest()
        )
    assert first.tokenizer.spec == second.tokenizer.spec


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_fixture_tokenizer_round_trips_text_and_has_chat_template(fixture_models, arch):
    tokenizer = load_model(fixture_models[arch]["gguf"]).tokenizer
    text = "Numbers 1234, code: def f(x): return x * 2\nUnicode: 你好 café 🎉"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert "What is 2+2?" in prompt and tokenizer.eos_token_ids
    assert np.all(np.array(tokenizer.encode(prompt)) < tokenizer.vocab_size)
