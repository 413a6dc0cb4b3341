"""The ``checkpoint`` asset: the acquire stage (``apr.qa.stages.acquire``) for the model a playbook names."""

from pathlib import Path

import dagster as dg

from pipelines.gateways import load_check
from pipelines.playbooks import load, model_ref
from pipelines.resources import AprSettings, WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.work_root import FileRef, file_ref

CODE_VERSION = "1"
ASSET = "checkpoint"


def model_files(path: Path, sha256: str) -> dict[str, FileRef]:
    """The files of a pulled model: one GGUF/APR file (sha256 known), or each file of a directory."""
    if path.is_file():
        return {"model": file_ref(path, sha256)}
    return {f"model/{child.name}": file_ref(child) for child in sorted(path.iterdir()) if child.is_file()}


def build_checkpoint(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=ASSET,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={"apr"},
        check_specs=[
            dg.AssetCheckSpec(
                "loads", asset=ASSET, blocking=True, description="G1: the pulled checkpoint opens as a valid model"
            )
        ],
        description="The model the playbook names, pulled (or found) in the apr cache with its sha256 verified.",
    )
    def checkpoint(context: dg.AssetExecutionContext, settings: AprSettings, work: WorkRoot):
        from apr.hub.digest import size_of
        from apr.qa import stages

        key = context.partition_key
        playbook = load(settings.playbooks(), key)
        ref = model_ref(settings.playbooks(), key)
        pulled = stages.acquire(playbook.model.ref, playbook.model_path())
        size = size_of(pulled.path)

        def build(_: Path) -> StageResult:
            return StageResult(
                files=model_files(pulled.path, pulled.sha256),
                facts={
                    "ref": ref,
                    "path": str(pulled.path),
                    "format": str(pulled.format),
                    "sha256": pulled.sha256,
                    "bytes": size,
                },
            )

        record = run_stage(
            work.layout(),
            asset=ASSET,
            partition=key,
            code_version=CODE_VERSION,
            inputs={"ref": ref, "sha256": pulled.sha256},
            build=build,
        )
        yield stage_output(
            record,
            None,
            {
                "ref": dg.MetadataValue.text(ref),
                "format": dg.MetadataValue.text(str(pulled.format)),
                "sha256": dg.MetadataValue.text(pulled.sha256),
                "bytes": dg.MetadataValue.int(size),
                "path": dg.MetadataValue.path(str(pulled.path)),
            },
        )
        yield load_check(ASSET, "loads", pulled.path)

    return checkpoint
