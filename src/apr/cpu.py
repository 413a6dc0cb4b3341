"""What this CPU can run, read from /proc/cpuinfo without importing torch: its model, its feature flags and the
native kernel variant (engine/native builds it; qa provenance records it)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Variant:
    """One build of the kernels: the CPU features (/proc/cpuinfo flag names) it needs and its extra flags."""

    name: str
    code: int  # what apr_qgemm_variant() returns in this build
    needs: tuple[str, ...]
    flags: tuple[str, ...]


# Best first; each needs AVX2, FMA and F16C besides its own features. Every build is bit-identical to avx2
# (see qgemm.c). avx512vnni runs the tiled products of two or more activation rows (batched decode, prompts)
# on 512-bit vectors, two rows a vector; everything else, and every product in the other builds, is 256-bit
# (-mprefer-vector-width=256 keeps the compiler's own vectorization there too).
VARIANTS = (
    Variant(
        "avx512vnni",
        1,
        ("avx512_vnni", "avx512vl", "avx512bw"),
        ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vnni", "-mprefer-vector-width=256"),
    ),
    Variant("avxvnni", 2, ("avx_vnni",), ("-mavxvnni",)),
    Variant("avx2", 0, (), ()),
)
BASE_FEATURES = ("avx2", "fma", "f16c")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return frozenset()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's marketing name from /proc/cpuinfo (x86 "model name", Arm "Model"), else what platform knows."""
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def supported_variants(flags: frozenset[str] | None = None) -> list[Variant]:
    """The variants this CPU can run, best first ([] without AVX2/FMA/F16C)."""
    flags = cpu_flags() if flags is None else flags
    if not all(feature in flags for feature in BASE_FEATURES):
        return []
    return [v for v in VARIANTS if all(feature in flags for feature in v.needs)]


def choose_variant(requested: str | None, flags: frozenset[str] | None = None) -> tuple[Variant | None, str]:
    """(the variant to build, "" or why none): the best supported one, or ``requested`` (APR_NATIVE_VARIANT)."""
    supported = supported_variants(flags)
    if not supported:
        return None, "the native kernels need AVX2, FMA and F16C (this CPU lacks some)"
    if not requested:
        return supported[0], ""
    names = [v.name for v in VARIANTS]
    if requested not in names:
        return None, f"APR_NATIVE_VARIANT={requested!r}: expected one of {', '.join(names)}"
    chosen = next((v for v in supported if v.name == requested), None)
    if chosen is None:
        return None, (
            f"APR_NATIVE_VARIANT={requested}: this CPU cannot run it (it runs {', '.join(v.name for v in supported)})"
        )
    return chosen, ""
