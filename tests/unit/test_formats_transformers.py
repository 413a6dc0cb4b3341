"""transformers agrees with our files: our SafeTensors dir vs its own GGUF loader, tokenizer and chat template."""

from __future__ import annotations

import pytest
import torch

from apr.formats import load_model
from apr.formats.convert import convert
from apr.formats.fixtures import FIXTURE_ARCHS

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello world! def add(a, b):\n    return a + b\n", "你好，世界 café 🎉 1234567", "  two  spaces\tand tab"]


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_transformers_logits_match_between_our_safetensors_and_the_source_gguf(fixture_models, tmp_path, arch):
    gguf_path = fixture_models[arch]["gguf"]
    convert(gguf_path, "safetensors", tmp_path / "hf", dtype="f32")
    ours = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    ids = load_model(gguf_path).tokenizer.encode(TEXTS[0], add_special_tokens=True)
    with torch.no_grad():
        a = ours(torch.tensor([ids])).logits
        b = reference(torch.tensor([ids])).logits
    assert a.shape == (1, len(ids), load_model(gguf_path).config.vocab_size)
    assert torch.equal(a, b)
    assert a.std() > 0


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_transformers_tokenizer_of_our_directory_matches_ours(fixture_models, arch):
    directory = fixture_models[arch]["safetensors"]
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    ours = load_model(directory).tokenizer
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
        assert ours.encode(text, add_special_tokens=True) == theirs.encode(text)
        assert ours.decode(ours.encode(text)) == theirs.decode(theirs.encode(text, add_special_tokens=False))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert ours.apply_chat_template(messages) == theirs.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_transformers_gguf_tokenizer_matches_ours(fixture_models, arch):
    path = fixture_models[arch]["gguf"]
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = load_model(path).tokenizer
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text
