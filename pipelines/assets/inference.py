"""The ``inference_traces`` asset: the trace stage — every matrix cell (format × backend × modality × prompt)
run through apr's CLI."""

import json
import re
from pathlib import Path

import dagster as dg

from pipelines.code_digest import apr_code_digest
from pipelines.playbooks import load
from pipelines.resources import AprSettings, WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.subject import artifact_records, subject_for
from pipelines.work_root import StageRecord, file_ref, write_text_atomic

CODE_VERSION = "1"
ASSET = "inference_traces"
CELLS_NAME = "cells.jsonl"
ARTIFACT_INPUTS = ("gguf", "apr", "safetensors")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def trace_document(key: str, run) -> dict:
    """The trace of one cell's subprocess: command, how it ended, reply, token counts, timings, stderr tail."""
    process = run.process
    return {
        "cell": key,
        "command": run.command,
        "argv": list(process.argv),
        "ending": str(run.ending.value),
        "reason": run.reason,
        "returncode": process.returncode,
        "duration_s": process.duration_s,
        "timed_out": process.timed_out,
        "text": run.text,
        "completion_tokens": run.completion_tokens,
        "finish_reason": run.finish_reason,
        "timings": dict(run.timings),
        "stderr_tail": process.stderr[-2000:],
    }


def run_matrix(subject, directory: Path) -> StageResult:
    """The trace stage: the playbook's cells on the artifacts; the cell evidence and one trace per cell."""
    from dataclasses import replace

    from apr.qa import stages
    from apr.qa.evidence import EvidenceWriter
    from apr.qa.progress import RunProgress

    evidence = directory / CELLS_NAME
    evidence.unlink(missing_ok=True)
    # Plain progress lines (Dagster keeps the step's stderr); deadlines and threads from the machine as it is now.
    progress = RunProgress(live=False)
    subject = replace(subject, calibration=stages.calibrate(progress=progress))
    with EvidenceWriter(evidence) as writer:
        summary = stages.trace(subject, writer, progress=progress)
    traces = directory / "traces"
    traces.mkdir(exist_ok=True)
    files = {"evidence": file_ref(evidence)}
    for key, run in sorted(summary.runs.items()):
        trace = traces / f"{_UNSAFE.sub('_', key)}.json"
        write_text_atomic(trace, json.dumps(trace_document(key, run), indent=2, ensure_ascii=False) + "\n")
        files[f"traces/{trace.name}"] = file_ref(trace)
    facts = {
        "cells_planned": len(subject.cells),
        "cells_run": summary.cells_run,
        "cells_not_run": summary.cells_not_run,
        "stopped_by": summary.stopped_by,
        "outcomes": dict(summary.outcomes),
        "traces": len(summary.runs),
        "cuda_available": subject.cuda,
    }
    return StageResult(files=files, facts=facts)


def build_inference_traces(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=ASSET,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={"python"},
        ins={name: dg.AssetIn(name) for name in ("checkpoint", *ARTIFACT_INPUTS)},
        check_specs=[
            dg.AssetCheckSpec(
                "every_cell_recorded",
                asset=ASSET,
                blocking=True,
                description="every planned cell left evidence (or a P0 failure stopped the run)",
            )
        ],
        description="The playbook's cell matrix run with the real apr CLI per format × backend × modality, with a trace JSON per cell.",
    )
    def inference_traces(
        context: dg.AssetExecutionContext,
        settings: AprSettings,
        work: WorkRoot,
        checkpoint: StageRecord,
        gguf: StageRecord,
        apr: StageRecord,
        safetensors: StageRecord,
    ):
        import torch

        key = context.partition_key
        playbook = load(settings.playbooks(), key)
        artifacts = artifact_records(playbook, checkpoint, {"gguf": gguf, "apr": apr, "safetensors": safetensors})
        cuda = bool(torch.cuda.is_available())
        subject = subject_for(playbook, checkpoint, artifacts, workers=settings.workers, cuda=cuda)
        # Only what shapes the matrix counts: editing a model-level gate's settings does not rerun the cells.
        inputs = {
            "cells": [cell.model_dump(mode="json") for cell in playbook.cells()],
            "execution": playbook.execution.model_dump(mode="json"),
            "model": playbook.model.model_dump(mode="json"),
            "quality": playbook.garbage_spec().model_dump(mode="json"),  # the cells' garbage oracle thresholds
            "cuda": cuda,
            "workers": settings.workers,
            "apr": apr_code_digest("cli", "engine", "formats", "qa", "serve"),
            "artifacts": {name: record.data_version for name, record in artifacts.items()},
            "checkpoint": checkpoint.data_version,
        }
        record = run_stage(
            work.layout(),
            asset=ASSET,
            partition=key,
            code_version=CODE_VERSION,
            inputs=inputs,
            build=lambda directory: run_matrix(subject, directory),
        )
        facts = record.facts
        metadata = {
            "cells": dg.MetadataValue.int(facts["cells_planned"]),
            "outcomes": dg.MetadataValue.json(facts["outcomes"]),
        }
        yield stage_output(record, "evidence", metadata)
        accounted = facts["cells_run"] + facts["cells_not_run"] == facts["cells_planned"]
        complete = accounted and (facts["cells_not_run"] == 0 or facts["stopped_by"] is not None)
        yield dg.AssetCheckResult(
            check_name="every_cell_recorded",
            passed=complete,
            description=(
                f"{facts['cells_run']}/{facts['cells_planned']} cells recorded"
                + (f"; stopped by {facts['stopped_by']}" if facts["stopped_by"] else "")
            ),
            metadata={"outcomes": dg.MetadataValue.json(facts["outcomes"])},
        )

    return inference_traces
