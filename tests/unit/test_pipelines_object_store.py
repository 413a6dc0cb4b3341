"""A work root on an object store: a real S3-compatible server on loopback (moto's ThreadedMotoServer) through
s3fs, a real Dagster instance, and two "workers" that cache the root in different folders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from apr.errors import AprError
from pipelines.resources import WorkRoot, WorkRootIOManager
from pipelines.stage import StageResult, run_stage
from pipelines.work_root import StageRecord, file_ref

s3fs = pytest.importorskip("s3fs", reason="the objectstore extra is not installed: pip install -e '.[objectstore]'")
moto_server = pytest.importorskip(
    "moto.moto_server.threaded_moto_server", reason="moto[s3] is not installed (the test extra pins it)"
)

BUCKET = "apr-work-test"
SECRET = "never-in-evidence-5c1e0b"  # the secret key: it must not appear in anything the pipelines store
PAYLOAD = b"weights " * 4096


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Credentials and endpoint in the environment only, as a worker gets them; a fresh bucket per test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "apr-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    yield fs
    fs.rm(BUCKET, recursive=True)
    s3fs.S3FileSystem.clear_instance_cache()


def made_asset(builds: list[Path]) -> dg.AssetsDefinition:
    @dg.asset(name="made")
    def made(work: WorkRoot) -> StageRecord:
        def build(directory: Path) -> StageResult:
            builds.append(directory)
            (directory / "out").mkdir(exist_ok=True)
            path = directory / "out" / "weights.bin"
            path.write_bytes(PAYLOAD)
            return StageResult(files={"weights": file_ref(path)}, facts={"path": str(path)})

        return run_stage(work.layout(), asset="made", partition=None, code_version="1", inputs={}, build=build)

    return made


@dg.asset(name="used")
def used_asset(work: WorkRoot, made: StageRecord) -> StageRecord:
    path = Path(made.facts["path"])  # re-rooted at this worker's cache, downloaded before the asset runs
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return StageRecord(asset="used", partition="", fingerprint="u", files={}, facts={"read": str(path), "sha": digest})


def resources(uri: str, cache: Path) -> dict:
    work = WorkRoot(root=uri, certifications_dir=str(cache.parent / "certifications"), cache_dir=str(cache))
    return {"work": work, "io_manager": WorkRootIOManager(work=work)}


def test_a_stage_one_worker_built_is_read_and_reused_from_the_bucket_by_another(tmp_path: Path, bucket) -> None:
    uri = f"s3://{BUCKET}/runs/one"
    builds: list[Path] = []
    made = made_asset(builds)
    with dg.instance_for_test() as instance:
        first = dg.materialize([made], resources=resources(uri, tmp_path / "worker-a"), instance=instance)
        # A second worker: an empty cache elsewhere, only the bucket in common.
        second = dg.materialize([made, used_asset], resources=resources(uri, tmp_path / "worker-b"), instance=instance)
    assert first.success and second.success
    assert len(builds) == 1, builds  # worker b reused the stage from the bucket instead of building it again
    keys = sorted(key.removeprefix(f"{BUCKET}/runs/one/") for key in bucket.find(f"{BUCKET}/runs/one"))
    assert keys == ["_all/made/manifest.json", "_all/made/out/weights.bin", "_all/used/manifest.json"], keys
    stored = bucket.cat_file(f"{BUCKET}/runs/one/_all/made/manifest.json").decode()
    record = json.loads(stored)
    # Stored records name files relative to the root, so that each worker re-roots them at its own cache.
    assert record["files"]["weights"]["path"] == "apr-work:/_all/made/out/weights.bin"
    assert str(tmp_path) not in stored and SECRET not in stored
    facts = second.asset_value("used").facts
    assert facts["read"] == str((tmp_path / "worker-b" / "_all/made/out/weights.bin").resolve())
    assert facts["sha"] == hashlib.sha256(PAYLOAD).hexdigest()
    # Each worker sees the record under its own cache, with one data version (downstream fingerprints agree).
    seen = [resources(uri, tmp_path / worker)["work"].layout().read_record("made", None) for worker in ("a", "b")]
    assert seen[0] is not None and seen[1] is not None and seen[0].facts != seen[1].facts
    assert seen[0].data_version == seen[1].data_version == first.asset_value("made").data_version


def test_a_file_changed_in_the_bucket_behind_the_manifest_is_refused_not_used(tmp_path: Path, bucket) -> None:
    uri = f"s3://{BUCKET}/runs/two"
    made = made_asset([])
    assert dg.materialize([made], resources=resources(uri, tmp_path / "worker-a")).success
    bucket.pipe_file(f"{BUCKET}/runs/two/_all/made/out/weights.bin", b"tampered")
    layout = resources(uri, tmp_path / "worker-b")["work"].layout()
    record = layout.read_record("made", None)
    assert record is not None
    with pytest.raises(AprError, match="does not match the sha256 its manifest records") as err:
        layout.fetch(record)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "worker-b").rglob("weights.bin*"))  # the bad download was never renamed in


def test_a_work_root_uri_with_credentials_in_it_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(AprError) as err:
        WorkRoot(root=f"s3://apr-test-key:{SECRET}@{BUCKET}/w", cache_dir=str(tmp_path)).layout()
    message = str(err.value)
    assert "\n" not in message and SECRET not in message and "must not carry credentials" in message
