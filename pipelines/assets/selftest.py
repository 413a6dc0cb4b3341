"""The ``self_test`` asset: the playbook's planted-defect self-test (``apr.qa.selftest``) on the partition's GGUF
artifact, once, after its gates.

Only a partition whose playbook has a ``self_test:`` block (the models' full tier: ``<model>-full``) plants and
gates anything; every other partition records that it has none and runs nothing, so the certification that
reads this asset says nothing about a self-test it did not have. The metadata are the detection figures:
planted, caught, detection rate and false blocks on the clean copy (``self-test/detection.json``).
"""

import shutil
from pathlib import Path

import dagster as dg

from pipelines.code_digest import apr_code_digest
from pipelines.playbooks import load
from pipelines.resources import AprSettings, WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.subject import artifact_sha256
from pipelines.work_root import StageRecord, file_ref

CODE_VERSION = "1"
ASSET = "self_test"
FOLDER = "self-test"  # apr.qa.selftest.report.SELF_TEST_DIR: the name it has beside a certification's evidence
DETECTION_JSON = "detection.json"  # apr.qa.selftest.report.DETECTION_JSON


def run_self_test(playbook, gguf: StageRecord, directory: Path) -> StageResult:
    """The self-test of ``playbook`` on the GGUF artifact into ``directory/self-test``; nothing without a block."""
    if playbook.self_test is None:
        return StageResult(files={}, facts={"enabled": False})
    from apr.qa import stages
    from apr.qa.artifacts import Artifacts
    from apr.qa.axes import Format
    from apr.qa.progress import RunProgress
    from apr.qa.selftest.report import verdict_sentence

    folder = directory / FOLDER
    shutil.rmtree(folder, ignore_errors=True)  # an earlier or interrupted run's files: measured again in full
    artifacts = Artifacts(
        source=Format.GGUF,
        paths={Format.GGUF: Path(gguf.facts["path"])},
        digests={Format.GGUF: artifact_sha256(gguf)},
    )
    # Plain progress lines: Dagster keeps the step's stderr.
    result = stages.self_test(artifacts, playbook, folder, progress=RunProgress(live=False))
    files = {
        path.relative_to(folder).as_posix(): file_ref(path) for path in sorted(folder.rglob("*")) if path.is_file()
    }
    planted = len(result.planted)
    return StageResult(
        files=files,
        facts={
            "enabled": True,
            "folder": str(folder),
            "planted": planted,
            "caught": result.caught,
            "false_blocks": result.false_blocks,
            "detection_rate": result.caught / planted if planted else None,
            "missed": [d.defect for d in result.planted if not d.blocked],
            "sentence": verdict_sentence(result),
        },
    )


def _metadata(record: StageRecord) -> dict[str, dg.MetadataValue]:
    facts = record.facts
    if not facts.get("enabled"):
        return {"enabled": dg.MetadataValue.bool(False)}
    rate = facts["detection_rate"]
    return {
        "enabled": dg.MetadataValue.bool(True),
        "planted": dg.MetadataValue.int(facts["planted"]),
        "caught": dg.MetadataValue.int(facts["caught"]),
        "detection_rate": dg.MetadataValue.float(float(rate)) if rate is not None else dg.MetadataValue.text("n/a"),
        "false_blocks": dg.MetadataValue.int(facts["false_blocks"]),
        "missed": dg.MetadataValue.text(", ".join(facts["missed"]) or "none"),
        "sentence": dg.MetadataValue.text(facts["sentence"]),
        "table": dg.MetadataValue.path(str(Path(facts["folder"]) / "detection.md")),
    }


def build_self_test(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=ASSET,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={"python", "gguf"},
        ins={"gguf": dg.AssetIn("gguf")},
        deps=[dg.AssetDep("gate_results")],  # once per certification, after its gates
        description="Planted-defect self-test (full tier): each defect of the catalogue written into a copy of the "
        "GGUF artifact and gated with the playbook's gates; detection.json/.md, planted/caught/false blocks.",
    )
    def self_test(context: dg.AssetExecutionContext, settings: AprSettings, work: WorkRoot, gguf: StageRecord):
        key = context.partition_key
        playbook = load(settings.playbooks(), key)
        inputs: dict = {"self_test": None}  # nothing to run: only a new self_test: block changes that
        if playbook.self_test is not None:
            inputs = {
                "self_test": playbook.self_test.model_dump(mode="json"),
                "gates": playbook.gates.model_dump(mode="json"),
                "model": playbook.model.model_dump(mode="json"),
                "playbook": playbook.name,
                "gguf": gguf.data_version,
                "apr": apr_code_digest("engine", "formats", "qa"),
            }
        record = run_stage(
            work.layout(),
            asset=ASSET,
            partition=key,
            code_version=CODE_VERSION,
            inputs=inputs,
            build=lambda directory: run_self_test(playbook, gguf, directory),
        )
        return stage_output(record, DETECTION_JSON if record.facts.get("enabled") else None, _metadata(record))

    return self_test
