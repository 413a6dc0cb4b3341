"""hf:// refs in process: choosing the GGUF file of a repo, and the offline error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apr.errors import HubError
from apr.hub import Hub, ModelCache
from apr.hub.catalog import load_catalog
from apr.hub.hf import choose_gguf
from apr.hub.refs import HfRef

REF = HfRef("org/repo", None)


def test_choose_gguf_takes_the_only_one_or_the_q4_k_m_one() -> None:
    assert choose_gguf(["README.md", "m.Q8_0.gguf"], REF) == "m.Q8_0.gguf"
    assert choose_gguf(["m.Q8_0.gguf", "sub/m.q4_k_m.gguf", "m.F16.gguf"], REF) == "sub/m.q4_k_m.gguf"
    assert choose_gguf(["config.json", "model.safetensors"], REF) is None


def test_choose_gguf_asks_for_a_file_when_ambiguous() -> None:
    with pytest.raises(HubError, match=r"several GGUF files \(a.Q8_0.gguf, b.F16.gguf\); name one: hf://org/repo/FILE"):
        choose_gguf(["b.F16.gguf", "a.Q8_0.gguf"], REF)


def test_offline_hf_pull_is_one_clear_hub_error(tmp_path: Path) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1", "tests/conftest.py sets HF_HUB_OFFLINE=1"
    hub = Hub(ModelCache(tmp_path / "home"), load_catalog({}))
    with pytest.raises(HubError) as caught:
        hub.pull("hf://apr-tests/surely-not-cached-anywhere/model.gguf", progress=False)
    message = str(caught.value)
    assert message.startswith("cannot fetch hf://apr-tests/surely-not-cached-anywhere/model.gguf: HF_HUB_OFFLINE")
    assert "\n" not in message
    assert list((tmp_path / "home" / "tmp").iterdir()) == []
    assert hub.list_cached() == []
