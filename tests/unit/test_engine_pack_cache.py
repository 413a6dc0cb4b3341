"""The engine's on-disk pack cache: a second load reuses converted weights, a changed checkpoint misses."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from apr.engine import load_engine
from apr.engine.pack_cache import PackStore, cache_key, read_aligned


def test_second_load_hits_and_gives_the_same_logits(fixture_models, tmp_path):
    for fmt in ("gguf", "safetensors"):  # a single file and a checkpoint folder
        source = fixture_models["qwen2"][fmt]
        copy = tmp_path / fmt / source.name
        copy.parent.mkdir()
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, copy)
        first = load_engine(copy, device="cpu")
        second = load_engine(copy, device="cpu")
        assert (first.describe()["weights_cache"], second.describe()["weights_cache"]) == ("written", "hit"), fmt
        ids = [5, 9, 17, 33]
        assert torch.equal(first.logits(ids), second.logits(ids))


def test_rewriting_any_file_of_a_checkpoint_changes_the_key(fixture_models, tmp_path):
    folder = tmp_path / "st"
    shutil.copytree(fixture_models["qwen2"]["safetensors"], folder)
    before = cache_key(folder, "tag")
    assert before is not None and before == cache_key(folder, "tag")
    assert cache_key(folder, "other-tag") != before
    config = folder / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache_key(folder, "tag") != before
    assert cache_key(tmp_path / "missing", "tag") is None


def test_the_size_limit_removes_least_recently_used_entries_first(tmp_path):
    from apr.engine.pack_cache import prune

    for age, name in enumerate(("newest", "middle", "oldest")):
        entry = tmp_path / f"{name}.safetensors"
        entry.write_bytes(b"x" * 1000)
        os.utime(entry, (1_000_000 - age * 10, 1_000_000 - age * 10))
    removed = prune(tmp_path, keep=tmp_path / "oldest.safetensors", limit=2000)
    assert [p.name for p in removed] == ["middle.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newest.safetensors", "oldest.safetensors"]
    assert prune(tmp_path, limit=10_000) == []


def test_cached_tensors_come_back_exact_and_packed_ones_64_byte_aligned(tmp_path, monkeypatch):
    """The kernels' vector loads want aligned rows; safetensors' own loader returns views at odd offsets."""
    monkeypatch.setenv("APR_HOME", str(tmp_path))
    store = PackStore.open("k")
    packed = {
        "q4k": torch.arange(37, dtype=torch.uint8),
        "q4k_scmin": torch.arange(7, dtype=torch.uint8),
        "q4k_dm": torch.arange(6, dtype=torch.int16).view(2, 3),
    }
    dense = {"weight": torch.randn(5, 3).to(torch.bfloat16)}
    store.put("layer", packed)
    store.put("embedding", dense)
    store.save()
    again = PackStore.open("k")
    assert again.hit
    for name, parts in (("layer", packed), ("embedding", dense)):
        for part, tensor in parts.items():
            loaded = again.get(name)[part]
            assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor)
    assert all(again.get("layer")[part].data_ptr() % 64 == 0 for part in packed)


def test_an_unreadable_cache_entry_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("APR_HOME", str(tmp_path))
    store = PackStore.open("k")
    store.put("layer", {"w": torch.randn(64, 64)})
    store.save()
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])  # truncated: a crash while copying, a full disk
    truncated = PackStore.open("k")
    assert not truncated.hit
    with pytest.raises(ValueError, match="truncated|offsets"):
        read_aligned(store.path)
    store.path.write_bytes(b"not a cache entry")
    assert not PackStore.open("k").hit
