"""The ``gguf``, ``apr`` and ``safetensors`` assets: the convert stage (``apr.qa.artifacts.convert_format``) per format."""

import os
import shutil
from pathlib import Path

import dagster as dg

from apr.qa.artifacts import SAFETENSORS_DTYPE  # the dtype every certification widens quantized sources to
from pipelines.code_digest import apr_code_digest
from pipelines.gateways import load_check, tensor_names
from pipelines.resources import AprSettings, WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.subject import artifact_sha256
from pipelines.work_root import FileRef, StageRecord, file_ref

CODE_VERSION = "1"
FORMATS = ("gguf", "apr", "safetensors")
ARTIFACT_NAMES = {"gguf": "model.gguf", "apr": "model.apr", "safetensors": "model"}


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link a file (no extra space) or copy it when the work root is on another disk."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def artifact_files(path: Path) -> dict[str, FileRef]:
    """FileRefs of an artifact (the file, or every file of a SafeTensors directory) and its conversion report."""
    if path.is_file():
        files = {"artifact": file_ref(path)}
    else:
        files = {f"artifact/{child.name}": file_ref(child) for child in sorted(path.iterdir()) if child.is_file()}
    from apr.formats.convert import report_path_for

    report = report_path_for(path)
    if report.is_file():
        files["conversion_report"] = file_ref(report)
    return files


def materialize_format(
    source: Path, source_format: str, target_format: str, staging: Path, dtype: str | None
) -> tuple[Path, dict]:
    """Write the checkpoint as ``target_format`` into ``staging``; same format means a link, not a rewrite."""
    target = staging / ARTIFACT_NAMES[target_format]
    if source_format == target_format:
        if source.is_dir():
            target.mkdir()
            for child in source.iterdir():
                if child.is_file():
                    link_or_copy(child, target / child.name)
        else:
            link_or_copy(source, target)
        return target, {"converted": False}
    from apr.qa.artifacts import convert_format
    from apr.qa.axes import Format

    report = convert_format(source, Format(target_format), target, dtype=dtype, report=True)
    # The per-tensor table stays in the report file next to the artifact; the summary goes in the manifest.
    return target, {
        "converted": True,
        "dtype": report.dtype,
        "seconds": report.seconds,
        "conversion": report.to_json()["summary"],
    }


def build_artifact(target_format: str, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    check_name = "loads"

    @dg.asset(
        name=target_format,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={target_format},
        ins={"checkpoint": dg.AssetIn("checkpoint")},
        check_specs=[
            dg.AssetCheckSpec(
                check_name,
                asset=target_format,
                blocking=True,
                description=f"G1: the {target_format} artifact loads with the checkpoint's tensor set",
            )
        ],
        description=f"The checkpoint written as {target_format} by apr.formats (a link when it already is one).",
    )
    def artifact(context: dg.AssetExecutionContext, settings: AprSettings, work: WorkRoot, checkpoint: StageRecord):
        key = context.partition_key
        layout = work.layout()
        source = Path(checkpoint.facts["path"])
        source_format = checkpoint.facts["format"]
        dtype = (settings.safetensors_dtype or SAFETENSORS_DTYPE) if target_format == "safetensors" else None

        def build(directory: Path) -> StageResult:
            with layout.staging_dir(target_format, key, "out") as staging:
                _, facts = materialize_format(source, source_format, target_format, staging, dtype)
            produced = directory / "out" / ARTIFACT_NAMES[target_format]
            return StageResult(
                files=artifact_files(produced),
                facts={"format": target_format, "path": str(produced), "dtype": "keep", **facts},
            )

        record = run_stage(
            layout,
            asset=target_format,
            partition=key,
            code_version=CODE_VERSION,
            inputs={"checkpoint": checkpoint.data_version, "dtype": dtype, "apr": apr_code_digest("formats")},
            build=build,
        )
        path = Path(record.facts["path"])
        weights = {name: ref for name, ref in record.files.items() if name.startswith("artifact")}
        yield stage_output(
            record,
            None,
            {
                "sha256": dg.MetadataValue.text(artifact_sha256(record)),
                "bytes": dg.MetadataValue.int(sum(ref.bytes for ref in weights.values())),
                "path": dg.MetadataValue.path(str(path)),
                "converted": dg.MetadataValue.bool(bool(record.facts.get("converted"))),
                "dtype": dg.MetadataValue.text(record.facts["dtype"]),
            },
        )
        yield load_check(target_format, check_name, path, expected_tensors=tensor_names(source))

    return artifact
