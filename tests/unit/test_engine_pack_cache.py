"""The engine's on-disk pack cache: a second load reuses converted weights, a changed checkpoint misses."""

from __future__ import annotations

import os
import shutil

import torch

from apr.engine import load_engine
from apr.engine.pack_cache import cache_key


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
