"""The ``functional_reference`` and ``functional_<format>`` assets: `apr eval` (HumanEval/MBPP pass@1) per format.

Each asset runs the FUNCTIONAL-CORRECTNESS measurement of ``apr.qa.gates.functional`` on one artifact (the
reference: the SafeTensors artifact with the playbook's ``reference_numerics``), in the folder that gate shares
under ``$APR_HOME/eval``, so `gate_results` later reuses these runs instead of repeating them. A format's asset
check pairs its results with the reference's, problem by problem, exactly as the gate judges them. A partition
whose playbook does not list the gate (the MVP tier) records that and runs nothing.
"""

import json
import shutil
from pathlib import Path

import dagster as dg

from pipelines.assets.artifacts import FORMATS
from pipelines.code_digest import apr_code_digest
from pipelines.playbooks import load
from pipelines.resources import AprSettings, WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.subject import artifact_sha256
from pipelines.work_root import StageRecord, file_ref

CODE_VERSION = "1"
REFERENCE = "functional_reference"
CHECK = "within_tolerance"


def asset_name(fmt: str) -> str:
    return f"functional_{fmt}"


def run_functional(
    artifact: StageRecord, settings_json: dict | None, numerics: str, chat: bool, directory: Path
) -> StageResult:
    """`apr eval` of one artifact (resumed in the gate's shared folder); its files copied into ``directory``."""
    if settings_json is None:
        return StageResult(files={}, facts={"enabled": False})
    from apr.qa.gates.functional import run_eval
    from apr.qa.gates.thresholds import FunctionalCorrectnessGate
    from apr.qa.procs import apr_command

    settings = FunctionalCorrectnessGate.model_validate(settings_json)
    path, sha256 = Path(artifact.facts["path"]), artifact_sha256(artifact)
    run = run_eval(path, sha256, settings, numerics, chat=chat, apr_argv=apr_command())
    assert run.process is not None  # run_eval always starts the process
    if run.summary is None:
        return StageResult(files={}, facts={"enabled": True, "failed": run.process.reason(), "numerics": numerics})
    files = {}
    for name in ("problems.jsonl", "summary.json"):
        shutil.copyfile(run.folder / name, directory / name)
        files[name] = file_ref(directory / name)
    keep = ("task", "pass@1", "passed", "total", "ci95", "complete", "tok_s", "wall_s", "statuses", "isolation")
    return StageResult(
        files=files,
        facts={"enabled": True, "numerics": numerics, **{k: run.summary[k] for k in keep if k in run.summary}},
    )


def _metadata(record: StageRecord) -> dict[str, dg.MetadataValue]:
    facts = record.facts
    if not facts.get("enabled"):
        return {"enabled": dg.MetadataValue.bool(False)}
    if "failed" in facts:
        return {"enabled": dg.MetadataValue.bool(True), "failed": dg.MetadataValue.text(facts["failed"])}
    low, high = facts["ci95"]
    return {
        "task": dg.MetadataValue.text(facts["task"]),
        "pass@1": dg.MetadataValue.float(float(facts["pass@1"])),
        "ci95": dg.MetadataValue.text(f"{low:.3f}-{high:.3f}"),
        "problems": dg.MetadataValue.int(int(facts["total"])),
        "tok/s": dg.MetadataValue.float(float(facts["tok_s"])),
        "numerics": dg.MetadataValue.text(facts["numerics"]),
    }


def _settings_json(settings: AprSettings, key: str) -> dict | None:
    gate = load(settings.playbooks(), key).gates.functional_correctness
    return None if gate is None else gate.model_dump(mode="json")


def _run(context, settings: AprSettings, work: WorkRoot, asset: str, artifact: StageRecord, numerics: str | None):
    key = context.partition_key
    gate = _settings_json(settings, key)
    chat = load(settings.playbooks(), key).model.chat_template
    chosen = numerics or (gate or {}).get("reference_numerics", "exact")
    inputs = {"artifact": artifact.data_version, "gate": gate, "numerics": chosen, "chat": chat}
    return run_stage(
        work.layout(),
        asset=asset,
        partition=key,
        code_version=CODE_VERSION,
        inputs={**inputs, "apr": apr_code_digest("eval")},
        build=lambda directory: run_functional(artifact, gate, chosen, chat, directory),
    )


def build_functional_reference(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=REFERENCE,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="functional",
        kinds={"python"},
        ins={"safetensors": dg.AssetIn("safetensors")},
        description="apr eval of the SafeTensors (bf16) artifact with the reference numerics: the pass@1 every "
        "format is held to (full tier: FUNCTIONAL-CORRECTNESS).",
    )
    def functional_reference(
        context: dg.AssetExecutionContext, settings: AprSettings, work: WorkRoot, safetensors: StageRecord
    ):
        record = _run(context, settings, work, REFERENCE, safetensors, None)
        return stage_output(record, None, _metadata(record))

    return functional_reference


def build_functional(fmt: str, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    name = asset_name(fmt)

    @dg.asset(
        name=name,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="functional",
        kinds={"python", fmt},
        ins={"artifact": dg.AssetIn(fmt), "reference": dg.AssetIn(REFERENCE)},
        check_specs=[
            dg.AssetCheckSpec(
                CHECK,
                asset=name,
                blocking=False,
                description=f"FUNCTIONAL-CORRECTNESS: {fmt} pass@1 within the playbook's tolerance of the reference",
            )
        ],
        description=f"apr eval of the {fmt} artifact (the engine's default numerics), paired with the reference.",
    )
    def functional(
        context: dg.AssetExecutionContext,
        settings: AprSettings,
        work: WorkRoot,
        artifact: StageRecord,
        reference: StageRecord,
    ):
        record = _run(context, settings, work, name, artifact, "fast")
        yield stage_output(record, None, _metadata(record))
        yield _tolerance_check(name, fmt, record, reference, _settings_json(settings, context.partition_key))

    return functional


def _tolerance_check(
    asset: str, fmt: str, record: StageRecord, reference: StageRecord, gate: dict | None
) -> dg.AssetCheckResult:
    """The gate's own verdict (``functional_check``) on the two records' per-problem results."""
    from apr.eval.results import read_results
    from apr.qa.axes import Format
    from apr.qa.evidence import Outcome
    from apr.qa.gates.functional import functional_check, paired_comparison
    from apr.qa.gates.thresholds import FunctionalCorrectnessGate

    def result(passed: bool, reason: str, **metadata) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            asset_key=asset, check_name=CHECK, passed=passed, metadata={"reason": reason, **metadata}
        )

    if gate is None:
        return result(False, "FUNCTIONAL-CORRECTNESS is not in this playbook's tier: nothing was compared")
    if "problems.jsonl" not in record.files or "problems.jsonl" not in reference.files:
        failed = record.facts.get("failed") or reference.facts.get("failed") or "no results"
        return result(False, f"not compared: {failed}")
    paired = paired_comparison(
        read_results(reference.path("problems.jsonl")), read_results(record.path("problems.jsonl"))
    )
    check = functional_check(Format(fmt), paired, FunctionalCorrectnessGate.model_validate(gate))
    return result(
        check.outcome is Outcome.CORROBORATED,
        check.reason,
        outcome=str(check.outcome),
        delta=float(check.measured or 0.0),
        flipped=json.loads(check.output) if check.output else {},
    )


def build_functional_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The reference and one asset per format."""
    return [build_functional_reference(partitions), *(build_functional(fmt, partitions) for fmt in FORMATS)]
