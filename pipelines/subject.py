"""The apr.qa stage inputs of one model partition, built from the records of the assets upstream of it."""

from __future__ import annotations

from pathlib import Path

from pipelines.work_root import StageRecord


def artifact_sha256(record: StageRecord) -> str:
    """The sha256 evidence cites for an artifact: the file's, or a SafeTensors directory's weights file."""
    if "artifact" in record.files:
        return record.files["artifact"].sha256
    weights = sorted(name for name in record.files if name.endswith(".safetensors"))
    return record.files[weights[0]].sha256 if weights else record.data_version


def artifact_records(playbook, checkpoint: StageRecord, available: dict[str, StageRecord]) -> dict[str, StageRecord]:
    """The artifact records a partition certifies: the matrix's formats, plus the source's own (as `apr certify`:
    model-level gates always check the checkpoint as given)."""
    wanted = [fmt.value for fmt in playbook.matrix.formats]
    source = checkpoint.facts["format"]
    return {name: available[name] for name in (*wanted, *([source] if source not in wanted else []))}


def subject_for(playbook, checkpoint: StageRecord, artifacts: dict[str, StageRecord], *, workers: int, cuda: bool):
    """The ``apr.qa.stages.Subject`` of a partition: the playbook's rules over the pipeline's artifacts."""
    from apr.qa import stages
    from apr.qa.artifacts import Artifacts
    from apr.qa.axes import Format

    source = Format(checkpoint.facts["format"])
    files = Artifacts(
        source=source,
        paths={Format(name): Path(record.facts["path"]) for name, record in artifacts.items()},
        digests={Format(name): artifact_sha256(record) for name, record in artifacts.items()},
    )
    return stages.subject_of(playbook, files, cuda=cuda, workers=max(workers, playbook.execution.workers))
