"""The settings module is the one reader of the environment, and the docs' table lists every variable it reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apr.settings import (
    DEFAULT_ENGINE_CACHE_GB,
    SPINS_BEFORE_SLEEP,
    VARIABLES,
    Settings,
    child_environ,
    export_omp_waits,
    omp_waits,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_typed_values_and_defaults(tmp_path: Path) -> None:
    defaults = Settings.from_environ({})
    assert defaults.home == Path.home() / ".cache" / "apr"
    assert defaults.registry_file is None and defaults.work_root is None and defaults.dagster_home is None
    assert defaults.huge_pages and defaults.native_kernels and not defaults.hf_offline
    assert defaults.engine_cache_gb == DEFAULT_ENGINE_CACHE_GB
    custom = Settings.from_environ(
        {
            "APR_HOME": str(tmp_path),
            "APR_HUGE_PAGES": "0",
            "APR_NATIVE_KERNELS": "0",
            "APR_ENGINE_CACHE_GB": "2.5",
            "HF_HUB_OFFLINE": "TRUE",
            "CC": "clang",
        }
    )
    assert custom.home == tmp_path and not custom.huge_pages and not custom.native_kernels
    assert custom.engine_cache_gb == 2.5 and custom.hf_offline and custom.compiler == "clang"
    # A malformed cache limit falls back to the default rather than stopping a model from loading.
    assert Settings.from_environ({"APR_ENGINE_CACHE_GB": "lots"}).engine_cache_gb == DEFAULT_ENGINE_CACHE_GB


def test_child_environ_adds_without_touching_ours() -> None:
    env = child_environ({"APR_TEST_ONLY": "1"})
    assert env["APR_TEST_ONLY"] == "1"
    assert "APR_TEST_ONLY" not in child_environ()


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = [
        str(path.relative_to(REPO_ROOT))
        for folder in ("src", "pipelines")
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        if "os.environ" in path.read_text("utf-8")
    ]
    # compile.py is the engine's and sets the inductor cache folder; it moves here once the engine work merges.
    assert readers in (["src/apr/settings.py"], ["src/apr/engine/compile.py", "src/apr/settings.py"])


def test_the_docs_table_lists_every_variable() -> None:
    text = (REPO_ROOT / "docs" / "contracts.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", text, flags=re.MULTILINE))
    assert documented == {variable.name for variable in VARIABLES}


def test_short_omp_spins_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    # Set, then deleted through monkeypatch: teardown restores the variables as they were, whatever the test set.
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(name, "unset-me")
        monkeypatch.delenv(name)
    assert Settings.from_environ({}).omp_wait_policy is None
    assert export_omp_waits() == f"spin {SPINS_BEFORE_SLEEP} times, then sleep (GOMP_SPINCOUNT)"
    assert child_environ()["GOMP_SPINCOUNT"] == str(SPINS_BEFORE_SLEEP)
    assert "OMP_WAIT_POLICY" not in child_environ()
    # A policy or a spin count of the user's own is never overridden.
    monkeypatch.setenv("GOMP_SPINCOUNT", "50")
    assert export_omp_waits() == "spin 50 times, then sleep (GOMP_SPINCOUNT)"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert export_omp_waits() == "passive (OMP_WAIT_POLICY)"
    assert "GOMP_SPINCOUNT" not in child_environ()
    assert Settings.from_environ({"OMP_WAIT_POLICY": " active "}).omp_wait_policy == "active"
    assert omp_waits(Settings.from_environ({})) == "libgomp default (spin ~300000 times, then sleep)"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", None), ("4096", 4096), ("0", 0), ("1000", None), ("-64", None), ("131072", None), ("x", None)],
)
def test_the_prefetch_distance_takes_multiples_of_64_up_to_64_kib(value: str, expected: int | None) -> None:
    assert Settings.from_environ({"APR_STREAM_AHEAD": value}).stream_ahead == expected
