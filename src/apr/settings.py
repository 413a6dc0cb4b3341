"""Every environment variable apr honours (``APR_*`` and a few standard ones), read in this one module only.

Each caller asks for ``current()`` at its entry point and passes the typed ``Settings`` on (or reads one
field). The environment is read when asked, not frozen at import: the test suite and `apr` subprocesses
change ``APR_HOME`` between calls, and a value cached at import would silently point at the wrong cache.
The table ``VARIABLES`` is what docs/contracts.md documents (a unit test keeps the two in agreement).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENGINE_CACHE_GB = 12.0  # the 1.5B takes ~1.2-1.8 GB of packed weights per format
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Variable:
    """One documented environment variable: its name, default and what it changes."""

    name: str
    default: str
    meaning: str


VARIABLES: tuple[Variable, ...] = (
    Variable("APR_HOME", "~/.cache/apr", "the model cache, converted artifacts, packed-weight and kernel caches"),
    Variable("APR_REGISTRY_FILE", "(none)", "a JSON file of extra registry models, overriding built-ins by ref"),
    Variable("APR_WORK", ".apr-work/ in the repository", "the Dagster pipelines' work root"),
    Variable("APR_ENGINE_CACHE_GB", "12", "size limit of the packed-weight cache under $APR_HOME/engine-cache"),
    Variable("APR_HUGE_PAGES", "1", "0 turns off transparent huge pages for packed weights"),
    Variable("APR_NATIVE_KERNELS", "1", "0 turns off the native C kernels (the pure-PyTorch path runs)"),
    Variable(
        "APR_NATIVE_VARIANT",
        "(the best this CPU runs)",
        "force a native kernel build: amx, avx512vnni, avxvnni or avx2 (refused if the CPU or, for amx, the OS lacks it)",
    ),
    Variable(
        "APR_STREAM_AHEAD",
        "2048",
        "bytes ahead of its reads that a native product prefetches its weight stream (decode's two-tile kernel keeps "
        "4096 a stream; a multiple of 64, 0 to 65536; 0: none; other values are ignored): a build flag, so another "
        "value builds kernels of its own",
    ),
    Variable(
        "OMP_NUM_THREADS",
        "(the free cores: apr.machine)",
        "CPU threads of the engine when --threads is not given; apr certify sets it for every cell",
    ),
    Variable(
        "OMP_WAIT_POLICY",
        "(unset: GOMP_SPINCOUNT decides)",
        "active: OpenMP threads spin at barriers; passive: they sleep at once (apr never overrides a value set)",
    ),
    Variable(
        "GOMP_SPINCOUNT",
        "3000 (set by the apr CLI when neither is set)",
        "how long OpenMP threads spin at a barrier before they sleep: short enough that a busy neighbour does not "
        "stall a step, long enough that a quiet machine loses nothing",
    ),
    Variable("CC", "cc, then gcc on PATH", "the C compiler that builds the native kernels"),
    Variable("HF_HUB_OFFLINE", "(unset)", "1/true: hf:// refs come only from the local Hugging Face cache"),
    Variable(
        "TORCHINDUCTOR_CACHE_DIR", "$APR_HOME/compile-cache", "where torch.compile (`--compile`) keeps its kernels"
    ),
    Variable(
        "DAGSTER_HOME",
        "dagster_home/ in the repository",
        "the Dagster instance `pipelines.materialize` records runs in",
    ),
)


@dataclass(frozen=True)
class Settings:
    """The typed values of ``VARIABLES``."""

    home: Path
    registry_file: Path | None
    work_root: Path | None
    engine_cache_gb: float
    huge_pages: bool
    native_kernels: bool
    native_variant: str | None
    stream_ahead: int | None
    compiler: str | None
    omp_threads: int | None
    omp_wait_policy: str | None
    gomp_spincount: str | None
    hf_offline: bool
    dagster_home: Path | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        def path(name: str) -> Path | None:
            value = environ.get(name, "").strip()
            return Path(value).expanduser() if value else None

        return cls(
            home=path("APR_HOME") or Path.home() / ".cache" / "apr",
            registry_file=path("APR_REGISTRY_FILE"),
            work_root=path("APR_WORK"),
            engine_cache_gb=_gigabytes(environ.get("APR_ENGINE_CACHE_GB", "")),
            huge_pages=environ.get("APR_HUGE_PAGES", "1") != "0",
            native_kernels=environ.get("APR_NATIVE_KERNELS", "1") != "0",
            native_variant=environ.get("APR_NATIVE_VARIANT", "").strip() or None,
            stream_ahead=_stream_ahead(environ.get("APR_STREAM_AHEAD", "")),
            compiler=environ.get("CC") or None,
            omp_threads=_positive_int(environ.get("OMP_NUM_THREADS", "")),
            omp_wait_policy=environ.get("OMP_WAIT_POLICY", "").strip() or None,
            gomp_spincount=environ.get("GOMP_SPINCOUNT", "").strip() or None,
            hf_offline=environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE,
            dagster_home=path("DAGSTER_HOME"),
        )


def _gigabytes(value: str) -> float:
    # A malformed limit must not stop a model from loading: the cache is an optimisation, so fall back.
    try:
        gigabytes = float(value) if value.strip() else DEFAULT_ENGINE_CACHE_GB
    except ValueError:
        return DEFAULT_ENGINE_CACHE_GB
    return gigabytes


def _positive_int(value: str) -> int | None:
    # OpenMP ignores a malformed or non-positive count too; apr then chooses as if it were unset.
    value = value.strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def _stream_ahead(value: str) -> int | None:
    # A prefetch distance is a tuning knob: a malformed one keeps the kernels' own default rather than
    # stopping the engine (apr --version says which distance the kernels use).
    value = value.strip()
    if not value.isdigit():
        return None
    ahead = int(value)
    return ahead if ahead <= 65536 and ahead % 64 == 0 else None


def current() -> Settings:
    """The settings as the process environment has them now."""
    return Settings.from_environ(os.environ)


def secret_from(variable: str) -> str | None:
    """The value of a variable the user named for a secret (``apr certify --api-key-env VAR``), None when unset
    or empty. Read here so that this module stays the one reader of the environment; never logged or kept."""
    return os.environ.get(variable) or None


def child_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a subprocess gets: all of ours (it reads the same settings), plus ``extra``."""
    return {**os.environ, **(extra or {})}


def export_inductor_cache_dir(path: Path) -> None:
    """Point torch's Inductor cache under ``path`` unless the user chose one: Inductor reads its location only
    from TORCHINDUCTOR_CACHE_DIR, when it first compiles, so the variable is set for this process."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path))


# Barrier spins before a waiting OpenMP thread sleeps (libgomp's GOMP_SPINCOUNT) where the user chose nothing.
SPINS_BEFORE_SLEEP = 3000


def omp_waits(settings: Settings | None = None) -> str:
    """How OpenMP threads wait at barriers under ``settings`` (default: the environment now), for reports."""
    settings = settings or current()
    if settings.omp_wait_policy:
        return f"{settings.omp_wait_policy} (OMP_WAIT_POLICY)"
    if settings.gomp_spincount:
        return f"spin {settings.gomp_spincount} times, then sleep (GOMP_SPINCOUNT)"
    return "libgomp default (spin ~300000 times, then sleep)"


def export_omp_waits() -> str:
    """Set GOMP_SPINCOUNT=SPINS_BEFORE_SLEEP unless the user chose a wait policy or a spin count; returns
    omp_waits() of the result.

    libgomp reads these once, when it is loaded (torch loads it on import), so the CLI calls this first thing;
    child processes inherit them. Its default spins up to ~300 000 times at every barrier: two threads of a decode
    step beside a neighbour holding one of the two cores decoded qwen2.5-coder:1.5b at 1.3 tok/s that way (the
    spinning thread keeps the core its partner needs). Sleeping at once (passive) avoids that but wakes a thread
    at each of a step's ~140 parallel regions, ~20 % of quiet decode. 3000 spins kept all of the quiet speed and
    lost ~10 % to passive beside a busy neighbour (Sapphire Rapids-class VM, 2026-12-05: quiet 26.1-26.8 tok/s
    against passive's 20.8-21.4, loaded 12.1-12.2 against 13.3-13.8; 100 000 spins collapsed to 3.3 loaded);
    bench/README.md, "OpenMP waits". A pause instruction lasts ~10-140 cycles by CPU, so the same count is a
    different time elsewhere; OMP_WAIT_POLICY=active or passive, or a GOMP_SPINCOUNT of one's own, wins.
    """
    settings = current()
    if settings.omp_wait_policy is None and settings.gomp_spincount is None:
        os.environ["GOMP_SPINCOUNT"] = str(SPINS_BEFORE_SLEEP)
    return omp_waits()
