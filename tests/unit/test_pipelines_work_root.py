"""The pipelines' work root: manifests, reuse only when inputs and files are unchanged, atomic stage folders."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from pipelines.partitions import discover_playbooks
from pipelines.resources import WorkRoot, WorkRootIOManager
from pipelines.stage import StageResult, run_stage
from pipelines.work_root import StageRecord, WorkLayout, file_ref, fingerprint


def build_counting(calls: list[Path], content: str = "weights"):
    def build(directory: Path) -> StageResult:
        calls.append(directory)
        path = directory / "artifact.bin"
        path.write_text(content, encoding="utf-8")
        return StageResult(files={"artifact": file_ref(path)}, facts={"content": content})

    return build


def stage(layout: WorkLayout, calls: list[Path], inputs: dict, code_version: str = "1") -> StageRecord:
    record = run_stage(
        layout, asset="gguf", partition="m", code_version=code_version, inputs=inputs, build=build_counting(calls)
    )
    layout.write_record(record)
    return record


def test_unchanged_inputs_reuse_the_stored_record(tmp_path: Path) -> None:
    layout, calls = WorkLayout(tmp_path), list[Path]()
    first = stage(layout, calls, {"checkpoint": "abc"})
    second = stage(layout, calls, {"checkpoint": "abc"})
    assert len(calls) == 1
    assert not first.reused and second.reused
    assert second.fingerprint == first.fingerprint and second.data_version == first.data_version


@pytest.mark.parametrize("change", ["inputs", "code_version", "file_edited", "file_deleted"])
def test_any_change_rebuilds(tmp_path: Path, change: str) -> None:
    layout, calls = WorkLayout(tmp_path), list[Path]()
    first = stage(layout, calls, {"checkpoint": "abc"})
    inputs, code_version = {"checkpoint": "abc"}, "1"
    if change == "inputs":
        inputs = {"checkpoint": "abd"}
    elif change == "code_version":
        code_version = "2"
    elif change == "file_edited":
        path = first.path("artifact")
        path.write_text("weightz", encoding="utf-8")  # same size: only the re-hash can see it
        os.utime(path, ns=(1, 1))
    else:
        first.path("artifact").unlink()
    second = stage(layout, calls, inputs, code_version)
    assert len(calls) == 2 and not second.reused


def test_fingerprint_depends_on_every_part() -> None:
    base = fingerprint("gguf", "1", {"a": 1})
    assert base == fingerprint("gguf", "1", {"a": 1})
    assert (
        len(
            {
                base,
                fingerprint("apr", "1", {"a": 1}),
                fingerprint("gguf", "2", {"a": 1}),
                fingerprint("gguf", "1", {"a": 2}),
            }
        )
        == 4
    )


def test_a_failed_stage_leaves_no_half_written_folder(tmp_path: Path) -> None:
    layout = WorkLayout(tmp_path)
    with layout.staging_dir("apr", "m", "out") as staging:
        (staging / "model.apr").write_text("good", encoding="utf-8")
    final = layout.asset_dir("apr", "m") / "out"
    with pytest.raises(RuntimeError):
        with layout.staging_dir("apr", "m", "out") as staging:
            (staging / "model.apr").write_text("half", encoding="utf-8")
            raise RuntimeError("converter died")
    assert (final / "model.apr").read_text(encoding="utf-8") == "good"
    assert sorted(p.name for p in final.parent.iterdir()) == ["out"]


def test_root_is_gitignored(tmp_path: Path) -> None:
    layout = WorkLayout(tmp_path / "work")
    layout.write_record(StageRecord(asset="a", partition="", fingerprint="f", files={}, facts={}))
    assert (tmp_path / "work" / ".gitignore").read_text(encoding="utf-8").splitlines()[-1] == "*"
    assert layout.manifest_path("a", None) == tmp_path / "work" / "_all" / "a" / "manifest.json"


def test_partition_keys_are_model_names_and_higher_tiers_keep_their_stem(tmp_path: Path) -> None:
    for name in ("smollm2-135m-mvp", "qwen-1b-full", "qwen-1b-mvp", "plain"):
        (tmp_path / f"{name}.playbook.yaml").write_text("", encoding="utf-8")
    (tmp_path / "notes.yaml").write_text("", encoding="utf-8")
    found = discover_playbooks(tmp_path)
    assert list(found) == ["plain", "qwen-1b", "qwen-1b-full", "smollm2-135m"]
    assert found["qwen-1b"].name == "qwen-1b-mvp.playbook.yaml"


def test_io_manager_round_trips_records_and_fans_in_only_materialized_partitions(tmp_path: Path) -> None:
    models = dg.StaticPartitionsDefinition(["a", "b", "c"])

    @dg.asset(partitions_def=models)
    def per_model(context) -> StageRecord:
        return StageRecord(
            asset="per_model",
            partition=context.partition_key,
            fingerprint="f",
            files={},
            facts={"model": context.partition_key},
        )

    @dg.asset(ins={"per_model": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
    def table(per_model: dict[str, StageRecord]) -> StageRecord:
        return StageRecord(asset="table", partition="", fingerprint="t", files={}, facts={"models": sorted(per_model)})

    work = WorkRoot(root=str(tmp_path))
    resources = {"work": work, "io_manager": WorkRootIOManager(work=work)}
    with dg.instance_for_test() as instance:
        for key in ("a", "c"):
            assert dg.materialize([per_model], partition_key=key, resources=resources, instance=instance).success
        result = dg.materialize([per_model, table], selection=[table], resources=resources, instance=instance)
    assert result.success
    table_record, model_record = (
        WorkLayout(tmp_path).read_record("table", None),
        WorkLayout(tmp_path).read_record("per_model", "c"),
    )
    assert table_record is not None and table_record.facts == {"models": ["a", "c"]}
    assert model_record is not None and model_record.facts == {"model": "c"}


def test_materialize_accepts_a_partition_key_or_the_ref_its_playbook_names(tmp_path: Path) -> None:
    from apr.errors import AprError
    from pipelines.materialize import partition_for
    from pipelines.partitions import DEFAULT_PLAYBOOKS_DIR

    keys = list(discover_playbooks(DEFAULT_PLAYBOOKS_DIR))
    assert "smollm2-135m" in keys
    assert partition_for(DEFAULT_PLAYBOOKS_DIR, "smollm2-135m") == "smollm2-135m"
    assert partition_for(DEFAULT_PLAYBOOKS_DIR, "smollm2:135m") == "smollm2-135m"  # the MVP, not the full tier
    assert "smollm2-135m-full" in keys
    with pytest.raises(AprError, match="neither a model partition"):
        partition_for(DEFAULT_PLAYBOOKS_DIR, "no-such-model:1b")


def test_the_code_digest_covers_the_engine_kernels_in_c() -> None:
    """A C-only kernel change must rerun inference: the digest reads the native sources too."""
    from pipelines.code_digest import package_sources

    names = {path.name for path in package_sources("engine")}
    assert {"qgemm.c", "layer.c", "glue.c", "apr_native.h", "model.py"} <= names
    assert not any(name.endswith((".so", ".pyc")) for name in names)


def test_publishing_a_certification_keeps_the_evidence_of_other_runs_beside_it(tmp_path):
    from pipelines.assets.certification import publish

    published = tmp_path / "certifications" / "demo"
    (published / "gpu-h200").mkdir(parents=True)
    (published / "gpu-h200" / "evidence.jsonl").write_text("gpu evidence\n")
    (published / "charts").mkdir()
    (published / "charts" / "old.svg").write_text("stale chart")
    (published / "report.html").write_text("old report")
    fresh = tmp_path / "out"
    (fresh / "charts").mkdir(parents=True)
    (fresh / "charts" / "new.svg").write_text("chart")
    (fresh / "report.html").write_text("new report")

    publish(fresh, published)

    assert (published / "gpu-h200" / "evidence.jsonl").read_text() == "gpu evidence\n"  # another run's: kept
    assert (published / "report.html").read_text() == "new report"  # the pipeline's own: replaced
    assert sorted(p.name for p in (published / "charts").iterdir()) == ["new.svg"]  # its folders: replaced whole
    assert sorted(p.name for p in tmp_path.joinpath("certifications").iterdir()) == ["demo"]  # no staging left


def test_a_publication_cut_short_between_its_renames_is_put_back_and_its_staging_removed(tmp_path: Path) -> None:
    from pipelines.assets.certification import publish
    from pipelines.work_root import discard_unfinished

    certifications = tmp_path / "certifications"
    # Killed after moving the old folder aside and before renaming the new one in: only hidden folders remain.
    (certifications / ".demo.old").mkdir(parents=True)
    (certifications / ".demo.old" / "report.html").write_text("the last complete report")
    (certifications / ".demo.new").mkdir()
    (certifications / ".demo.new" / "report.html").write_text("half of a new rep")
    discard_unfinished(certifications, "demo")
    assert sorted(p.name for p in certifications.iterdir()) == ["demo"]
    assert (certifications / "demo" / "report.html").read_text() == "the last complete report"

    # A publication that starts over such leftovers replaces the restored folder, leaving nothing hidden.
    (certifications / ".demo.new").mkdir()
    fresh = tmp_path / "out"
    fresh.mkdir()
    (fresh / "report.html").write_text("new report")
    publish(fresh, certifications / "demo")
    assert sorted(p.name for p in certifications.iterdir()) == ["demo"]
    assert (certifications / "demo" / "report.html").read_text() == "new report"


def test_a_partition_s_interrupted_stages_leave_no_staging_folder(tmp_path: Path) -> None:
    layout = WorkLayout(tmp_path / "work")
    gguf = layout.asset_dir("gguf", "m")
    (gguf / "out").mkdir(parents=True)
    (gguf / ".out.k2j3h4").mkdir()  # a staging_dir never renamed into place
    (gguf / ".out.k2j3h4" / "model.gguf").write_bytes(b"GGUF half")
    (gguf / "manifest.json").write_text("{}")
    layout.discard_unfinished("m")
    assert sorted(p.name for p in gguf.iterdir()) == ["manifest.json", "out"]
