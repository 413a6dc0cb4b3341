"""The cache with local models: registration in place, hashing, format sniffing, list and resolve."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from apr.errors import HubError
from apr.hub import Hub, ModelCache
from apr.hub.catalog import load_catalog
from apr.hub.digest import sha256_of
from apr.hub.sniff import detect_format


def _hub(home: Path) -> Hub:
    return Hub(ModelCache(home), load_catalog({}))


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)


def test_format_comes_from_magic_bytes_not_the_name(tmp_path: Path) -> None:
    disguised_gguf = tmp_path / "weights.safetensors"
    disguised_gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(16))
    apr_file = tmp_path / "model.gguf"
    apr_file.write_bytes(b"APR\x00" + bytes(16))
    st_file = tmp_path / "model.bin"
    st_file.write_bytes(_safetensors_bytes())
    assert detect_format(disguised_gguf) == "gguf"
    assert detect_format(apr_file) == "apr"
    assert detect_format(st_file) == "safetensors"


def test_safetensors_directory_needs_config_and_weights(tmp_path: Path) -> None:
    model_dir = tmp_path / "hf-model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(_safetensors_bytes())
    with pytest.raises(HubError, match="needs config.json"):
        detect_format(model_dir)
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    assert detect_format(model_dir) == "safetensors"


@pytest.mark.parametrize("content", [b"", b"hello world, not a model", b"\xff" * 64])
def test_non_models_are_rejected(tmp_path: Path, content: bytes) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(content)
    with pytest.raises(HubError, match="not a model file"):
        detect_format(junk)


def test_local_file_is_registered_in_place_with_its_hash(tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny.gguf"
    model.parent.mkdir()
    data = b"GGUF" + bytes(range(256)) * 40
    model.write_bytes(data)
    hub = _hub(tmp_path / "home")
    cached = hub.pull(str(model), progress=False)
    assert cached.path == model.resolve()
    assert cached.format == "gguf"
    assert cached.size_bytes == len(data)
    assert cached.sha256 == hashlib.sha256(data).hexdigest()
    assert cached.source == "local"
    assert not list((tmp_path / "home" / "models").rglob("tiny.gguf")), "local models must not be copied"
    assert [m.ref for m in hub.list_cached()] == [str(model.resolve())]


def test_changed_local_file_is_rehashed_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF-one")
    hub = _hub(tmp_path / "home")
    first = hub.pull(str(model), progress=False)
    model.write_bytes(b"GGUF-two")
    second = hub.pull(str(model), progress=False)
    assert second.sha256 == hashlib.sha256(b"GGUF-two").hexdigest() != first.sha256
    assert "changed since it was registered" in capsys.readouterr().err
    assert [m.sha256 for m in hub.list_cached()] == [second.sha256]


def test_directory_hash_covers_names_and_contents(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(_safetensors_bytes())
    first = sha256_of(model_dir, progress=False)
    assert sha256_of(model_dir, progress=False) == first
    (model_dir / "config.json").write_text('{"x": 1}')
    changed = sha256_of(model_dir, progress=False)
    (model_dir / "config.json").rename(model_dir / "config2.json")
    assert len({first, changed, sha256_of(model_dir, progress=False)}) == 3


def test_safetensors_directory_registers_as_one_model(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(_safetensors_bytes())
    cached = _hub(tmp_path / "home").pull(str(model_dir), progress=False)
    assert cached.format == "safetensors"
    assert cached.size_bytes == 2 + len(_safetensors_bytes())


def test_resolve_prefers_an_existing_path(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF")
    hub = _hub(tmp_path / "home")
    assert hub.resolve_model_arg(str(model), progress=False) == model
    assert hub.list_cached() == [], "resolving a plain path must not register it"


def test_resolve_unknown_name_is_a_hub_error(tmp_path: Path) -> None:
    with pytest.raises(HubError, match="unknown model ref 'nosuch:1b'"):
        _hub(tmp_path / "home").resolve_model_arg("nosuch:1b", progress=False)


def test_empty_cache_lists_nothing_and_bad_manifests_are_skipped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    hub = _hub(home)
    assert hub.list_cached() == []
    broken = home / "models" / "broken-entry"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    assert hub.list_cached() == []
