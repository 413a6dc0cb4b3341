"""Evidence names the CPU kernels that actually load, including the variant a failed build fell back to."""

from __future__ import annotations

import shutil

import pytest
from native_compilers import compiler_refusing, refused_flag

from apr.cpu import supported_variants
from apr.engine import native
from apr.qa import provenance

COMPILER = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(
    not (native.available() and COMPILER), reason=f"native kernels: {native.unavailable_reason() or 'no cc'}"
)


def test_the_recorded_family_is_the_build_this_process_loaded():
    assert provenance.kernel_family() == native.variant()


def test_a_variant_that_does_not_build_is_not_recorded(tmp_path, monkeypatch):
    """A compiler that refuses the first choice's flags (as a gcc too old for AMX does): the engine falls back
    to the next build, and the evidence must name that one, not the choice the CPU flags predicted."""
    first, *rest = supported_variants()
    wrapper = compiler_refusing(tmp_path, refused_flag(first, rest[0] if rest else None))
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("APR_HOME", str(tmp_path / "home"))  # an empty kernel cache: every build runs the compiler
    monkeypatch.delenv("APR_NATIVE_VARIANT", raising=False)
    monkeypatch.delenv("APR_NATIVE_KERNELS", raising=False)
    expected = rest[0].name if rest and first.flags else "torch"
    assert provenance.kernel_family() == expected != first.name


def test_kernels_switched_off_are_recorded_as_torch(monkeypatch):
    monkeypatch.setenv("APR_NATIVE_KERNELS", "0")
    assert provenance.kernel_family() == "torch"


@pytest.mark.parametrize("script", ["exit 1", "echo Traceback >&2; exit 1", "echo torch; exit 1", "echo avx9; exit 0"])
def test_a_probe_that_does_not_answer_records_no_kernels(script, tmp_path, monkeypatch):
    """A crashed or garbled probe is not evidence of any kernel family (least of all of 'torch')."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(provenance.sys, "executable", str(fake))
    provenance._probe_kernels.cache_clear()
    try:
        assert provenance.kernel_family() is None
    finally:
        provenance._probe_kernels.cache_clear()


def test_exact_numerics_and_gpu_checks_name_the_kernels_that_ran(monkeypatch):
    from datetime import UTC, datetime

    from apr.qa.axes import Backend

    now = datetime.now(UTC)
    exact = provenance.capture(started_at=now, finished_at=now, device="cpu", backend=Backend.CPU, numerics="exact")
    assert exact.kernels == "torch"  # every tensor dequantized to float32: PyTorch's kernels, not the native ones
    gpu = provenance.capture(started_at=now, finished_at=now, device="cuda", backend=Backend.GPU, numerics="fast")
    assert gpu.kernels is None
    fast = provenance.capture(started_at=now, finished_at=now, device="cpu", backend=Backend.CPU, numerics="fast")
    assert fast.kernels == native.variant()
