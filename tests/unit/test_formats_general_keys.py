"""general.* keys (provenance) survive GGUF → APR → GGUF and GGUF → SafeTensors → GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from apr.formats import load_model
from apr.formats.convert import convert
from apr.formats.gguf_write import write_gguf

# The keys a real GGUF carries (qwen2.5-coder's file has type, name, finetune, basename, size_label,
# file_type), plus license and tags as other publishers write them.
GENERAL = {
    "general.type": "model",
    "general.name": "apr-fixture-qwen2",
    "general.finetune": "Instruct",
    "general.basename": "Qwen2.5-Coder",
    "general.size_label": "1.5B",
    "general.license": "apache-2.0",
    "general.tags": ["code", "chat"],
    "general.file_type": 15,
}


def _general(path: Path) -> dict:
    return {k: v for k, v in load_model(path).metadata.items() if k.startswith("general.")}


@pytest.fixture()
def source(fixture_models, tmp_path: Path) -> Path:
    model = load_model(fixture_models["qwen2"]["gguf"])
    model.metadata.update(GENERAL)
    return write_gguf(model, tmp_path / "source.gguf")


def test_the_source_holds_every_listed_key(source: Path) -> None:
    assert GENERAL.items() <= _general(source).items()


def test_gguf_apr_gguf_keeps_every_general_key(source: Path, tmp_path: Path) -> None:
    convert(source, "apr", tmp_path / "m.apr")
    apr_meta = load_model(tmp_path / "m.apr").metadata
    assert apr_meta["apr.general"] == GENERAL and apr_meta["license"] == "apache-2.0"
    convert(tmp_path / "m.apr", "gguf", tmp_path / "back.gguf")
    assert _general(tmp_path / "back.gguf") == _general(source)


def test_gguf_safetensors_gguf_keeps_every_general_key(source: Path, tmp_path: Path) -> None:
    convert(source, "safetensors", tmp_path / "hf")
    convert(tmp_path / "hf", "gguf", tmp_path / "back.gguf")
    back = _general(tmp_path / "back.gguf")
    assert set(back) == set(_general(source))
    # file_type describes storage: the f32 SafeTensors round trip stores every tensor as F32 (LLAMA_FTYPE 0).
    assert back.pop("general.file_type") == 0
    assert back == {k: v for k, v in _general(source).items() if k != "general.file_type"}


def test_file_type_is_kept_while_the_blocks_are(source: Path, tmp_path: Path) -> None:
    convert(source, "gguf", tmp_path / "copy.gguf")
    assert _general(tmp_path / "copy.gguf")["general.file_type"] == 15
    convert(source, "gguf", tmp_path / "f16.gguf", dtype="f16")
    assert _general(tmp_path / "f16.gguf")["general.file_type"] == 1


@pytest.mark.integration
def test_real_qwen_gguf_apr_gguf_keeps_its_general_keys(real_model, real_converted, tmp_path: Path) -> None:
    source = real_model("qwen2.5-coder:1.5b")
    original = _general(source)
    assert {"general.file_type", "general.basename", "general.size_label"} <= set(original)
    converted = real_converted("qwen2.5-coder:1.5b", "apr")  # the session's GGUF -> APR conversion of it
    convert(converted, "gguf", tmp_path / "q.gguf")
    assert _general(tmp_path / "q.gguf") == original
