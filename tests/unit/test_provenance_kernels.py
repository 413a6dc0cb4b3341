"""Evidence names the CPU kernels that actually load, including the variant a failed build fell back to."""

from __future__ import annotations

import shlex
import shutil

import pytest

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
    refused = " ".join(first.flags)  # avx2 has no flags of its own: refusing it refuses every build
    wrapper = tmp_path / "cc-without-first"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"for flag in {refused}; do\n"
        '  case " $* " in *" $flag "*) ;; *) exec ' + shlex.quote(COMPILER) + ' "$@" ;; esac\n'
        "done\n"
        f"echo \"cc: error: unrecognized command-line option '{first.flags[0] if first.flags else '-mavx2'}'\" >&2\n"
        "exit 1\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("APR_HOME", str(tmp_path / "home"))  # an empty kernel cache: every build runs the compiler
    monkeypatch.delenv("APR_NATIVE_VARIANT", raising=False)
    monkeypatch.delenv("APR_NATIVE_KERNELS", raising=False)
    expected = rest[0].name if rest and first.flags else "torch"
    assert provenance.kernel_family() == expected != first.name


def test_kernels_switched_off_are_recorded_as_torch(monkeypatch):
    monkeypatch.setenv("APR_NATIVE_KERNELS", "0")
    assert provenance.kernel_family() == "torch"
