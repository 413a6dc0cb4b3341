"""What this CPU can run, read from /proc/cpuinfo without importing torch: its model, its feature flags and the
native kernel variant (engine/native builds it; qa provenance records it)."""

from __future__ import annotations

import ctypes
import functools
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

    @property
    def needs_tiles(self) -> bool:
        """Whether the build uses the AMX tile unit (so the OS must grant the process the tile state)."""
        return set(TILE_FLAGS) <= set(self.needs)


AVX512_VNNI_FLAGS = ("-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512vnni", "-mprefer-vector-width=256")
TILE_FLAGS = ("amx_tile", "amx_int8")

# Best first; each needs AVX2, FMA and F16C besides its own features. Every build is bit-identical to avx2
# (see qgemm.c). avx512vnni runs the tiled products on 512-bit vectors, two activation rows a vector (batched
# decode, prompts) or, at one row, two weight tiles a vector; everything else, and every product in the other
# builds, is 256-bit
# (-mprefer-vector-width=256 keeps the compiler's own vectorization there too). amx is avx512vnni plus the
# AMX tile unit for the tiled products of 32 or more rows (prompts); Linux must also grant the process the
# tile state (tiles_granted).
VARIANTS = (
    Variant(
        "amx",
        3,
        ("avx512_vnni", "avx512vl", "avx512bw", *TILE_FLAGS),
        (*AVX512_VNNI_FLAGS, "-mamx-tile", "-mamx-int8"),
    ),
    Variant(
        "avx512vnni",
        1,
        ("avx512_vnni", "avx512vl", "avx512bw"),
        AVX512_VNNI_FLAGS,
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


@functools.cache
def tiles_granted() -> bool:
    """Whether Linux gives this process the AMX tile state: it must be asked for (arch_prctl
    ARCH_REQ_XCOMP_PERM, Linux 5.16+), and asking is what grants it, to this process and its children."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(sys_arch_prctl, req_xcomp_perm, xfeature_xtiledata) == 0
    except (OSError, AttributeError):  # no libc symbol table to call through: no tiles
        return False


def supported_variants(flags: frozenset[str] | None = None, *, granted: bool | None = None) -> list[Variant]:
    """The variants this CPU can run, best first ([] without AVX2/FMA/F16C). ``granted``: whether the OS gives
    the tile state (default: ask it, when the flags have AMX)."""
    flags = cpu_flags() if flags is None else flags
    if not all(feature in flags for feature in BASE_FEATURES):
        return []
    found = [v for v in VARIANTS if all(feature in flags for feature in v.needs)]
    if any(v.needs_tiles for v in found) and not (tiles_granted() if granted is None else granted):
        found = [v for v in found if not v.needs_tiles]
    return found


def choose_variant(
    requested: str | None, flags: frozenset[str] | None = None, *, granted: bool | None = None
) -> tuple[Variant | None, str]:
    """(the variant to build, "" or why none): the best supported one, or ``requested`` (APR_NATIVE_VARIANT)."""
    supported = supported_variants(flags, granted=granted)
    if not supported:
        return None, "the native kernels need AVX2, FMA and F16C (this CPU lacks some)"
    if not requested:
        return supported[0], ""
    names = [v.name for v in VARIANTS]
    if requested not in names:
        return None, f"APR_NATIVE_VARIANT={requested!r}: expected one of {', '.join(names)}"
    chosen = next((v for v in supported if v.name == requested), None)
    if chosen is None and requested == "amx" and set(TILE_FLAGS) <= (cpu_flags() if flags is None else flags):
        return None, "APR_NATIVE_VARIANT=amx: the OS does not grant this process the AMX tile state (Linux 5.16+)"
    if chosen is None:
        return None, (
            f"APR_NATIVE_VARIANT={requested}: this CPU cannot run it (it runs {', '.join(v.name for v in supported)})"
        )
    return chosen, ""
