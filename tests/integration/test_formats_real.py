"""Real checkpoints through our readers and writers: smollm2:135m through all formats and back; tokenizers vs transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apr.formats import load_model
from apr.formats.convert import convert
from apr.formats.gguf_parse import parse_gguf_header

pytestmark = pytest.mark.integration

CORPUS = [
    "Hello world!",
    "def add_numbers(a, b):\n    return a + b\n\n",
    "  leading spaces and\ttabs\n\n\nnewlines",
    "你好，世界！这是一个测试。",
    "Ünïcödé — “quotes” … emoji 🎉🚀",
    "numbers 1234567 and 3.14159",
    "<|im_start|>user\nHi<|im_end|>",
    "mixed: für naïve café 東京 Москва",
]


def _data_section(path):
    data = np.memmap(path, dtype=np.uint8, mode="r")
    header = parse_gguf_header(path, memoryview(data))
    return header, data[header.data_offset :]


def test_smollm2_through_all_formats_and_back(real_model, tmp_path):
    src = real_model("smollm2:135m")
    original = load_model(src)
    assert original.config.architecture == "llama" and original.config.tie_word_embeddings

    apr = convert(src, "apr", tmp_path / "m.apr")
    assert all(t.bytes_identical for t in apr.tensors)
    back = convert(tmp_path / "m.apr", "gguf", tmp_path / "back.gguf")
    assert back.max_abs_diff == 0.0
    h1, d1 = _data_section(src)
    h2, d2 = _data_section(tmp_path / "back.gguf")
    assert [(t.name, t.ne, t.type_id) for t in h1.tensors] == [(t.name, t.ne, t.type_id) for t in h2.tensors]
    assert np.array_equal(d1, d2)  # GGUF -> APR -> GGUF: byte-identical tensor data
    assert h2.metadata["tokenizer.ggml.merges"] == h1.metadata["tokenizer.ggml.merges"]

    st = convert(tmp_path / "m.apr", "safetensors", tmp_path / "hf", dtype="f32")
    assert st.max_abs_diff == 0.0
    again = convert(tmp_path / "hf", "apr", tmp_path / "from-hf.apr")
    assert again.max_abs_diff == 0.0
    final = convert(tmp_path / "from-hf.apr", "gguf", tmp_path / "final.gguf")
    assert final.max_abs_diff == 0.0
    last = load_model(tmp_path / "final.gguf")
    assert last.config == original.config
    for name, tensor in original.tensors.items():
        assert torch.equal(last.tensors[name].dequantize(), tensor.dequantize()), name
    for text in CORPUS:
        assert last.tokenizer.encode(text) == original.tokenizer.encode(text)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert last.tokenizer.apply_chat_template(messages) == original.tokenizer.apply_chat_template(messages)


def test_smollm2_transformers_logits_equal_on_our_safetensors(real_model, hf_reference, tmp_path):
    transformers = pytest.importorskip("transformers")
    src = real_model("smollm2:135m")
    convert(src, "safetensors", tmp_path / "hf", dtype="f32")
    ours = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    reference = hf_reference(src)  # transformers reading the GGUF itself
    ids = load_model(src).tokenizer.encode("The capital of France is")
    with torch.no_grad():
        a, b = ours(torch.tensor([ids])).logits, reference(torch.tensor([ids])).logits
    assert torch.equal(a, b)
    assert int(a[0, -1].argmax()) == int(b[0, -1].argmax())


@pytest.mark.parametrize("ref", ["smollm2:135m", "qwen2.5-coder:1.5b", "gemma3:270m"])
def test_tokenizer_matches_transformers_gguf_tokenizer(real_model, ref):
    transformers = pytest.importorskip("transformers")
    path = real_model(ref)
    ours = load_model(path).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in CORPUS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text
    assert ours.encode("Hi", add_special_tokens=True) == theirs.encode("Hi")
    if ours.has_chat_template:
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
        assert ours.apply_chat_template(messages) == theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


def test_real_configs_come_from_metadata(real_model):
    qwen = load_model(real_model("qwen2.5-coder:1.5b"))
    c = qwen.config
    assert (c.architecture, c.rope_theta, c.attention_bias, c.tie_word_embeddings) == ("qwen2", 1e6, True, False)
    assert set(c.eos_token_ids) == {
        qwen.tokenizer.backend.token_to_id("<|im_end|>"),
        qwen.tokenizer.backend.token_to_id("<|endoftext|>"),
    }
    assert qwen.tensors["lm_head.weight"].info.ggml_type == 14  # Q6_K
    assert qwen.tensors["model.layers.0.self_attn.q_proj.bias"].info.ggml_type == 0
    gemma = load_model(real_model("gemma3:270m")).config
    assert gemma.sliding_window == 512 and gemma.layer_kinds[5] == "full" and gemma.layer_kinds[0] == "sliding"
    assert gemma.rope_local_theta == 10_000.0 and gemma.norm_weight_offset == 1.0
    assert gemma.query_pre_attn_scalar == 256 and gemma.hidden_activation == "gelu_tanh"
    assert abs(gemma.embedding_multiplier - 640**0.5) < 1e-9


def test_trace_structure_on_qwen(real_model):
    from apr.formats.structure import trace_structure

    model = load_model(real_model("qwen2.5-coder:1.5b"))
    report = trace_structure(model, name_filter="model.layers.0.")
    assert report["flags"] == []
    assert report["rope_theta"] == 1e6
    assert all(abs(v) > 0 for v in report["bias_mean"].values()) and len(report["bias_mean"]) == 3
    norms = report["norm_effective_mean"]
    assert norms and all(v > 0.01 for v in norms.values())
