"""Evidence from a GPU names the GPU: provenance asks nvidia-smi, and says nothing more where there is none."""

from __future__ import annotations

import pytest

from apr.qa import provenance


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An `nvidia-smi` on PATH that answers the name query as the real one does on an H200 machine."""
    script = tmp_path / "nvidia-smi"
    script.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=name" ] && echo "NVIDIA H200" && exit 0\nexit 9\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    provenance.accelerator_name.cache_clear()
    yield
    provenance.accelerator_name.cache_clear()


def test_cuda_device_is_named_after_the_gpu(fake_nvidia_smi):
    assert provenance.named_device("cuda") == "cuda (NVIDIA H200)"
    assert provenance.named_device("cuda:0 (already named)") == "cuda:0 (already named)"
    assert provenance.named_device("cpu") == "cpu"


def test_without_nvidia_smi_the_device_stays_as_given(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    provenance.accelerator_name.cache_clear()
    try:
        assert provenance.accelerator_name() is None
        assert provenance.named_device("cuda") == "cuda"
    finally:
        provenance.accelerator_name.cache_clear()
