"""The ``gate_results`` asset: the gate stage — apr.qa's model-level and runtime gates around the cell evidence."""

from pathlib import Path
from statistics import median

import dagster as dg

from pipelines.code_digest import apr_code_digest
from pipelines.playbooks import load
from pipelines.resources import AprSettings, WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.subject import artifact_records, subject_for
from pipelines.work_root import StageRecord, file_ref

CODE_VERSION = "1"
ASSET = "gate_results"
EVIDENCE_NAME = "evidence.jsonl"


def decode_speeds(records) -> dict[str, float]:
    """Decode tok/s per ``format/backend`` as the THROUGHPUT gate measured it (`apr bench`)."""
    from apr.qa.gates.catalog import GateId

    return {
        f"{r.scenario.format}/{r.scenario.backend}": r.measured
        for r in records
        if r.gate is GateId.THROUGHPUT and r.measured is not None
    }


def run_gates(subject, cells: Path, directory: Path) -> StageResult:
    """Write ``evidence.jsonl`` in `apr certify`'s order: model-level gates, the matrix cells (copied from
    ``inference_traces``), then the runtime gates (determinism reruns, throughput, GPU speedup)."""
    from collections import Counter
    from dataclasses import replace

    from apr.qa import stages
    from apr.qa.evidence import EvidenceWriter, read_evidence
    from apr.qa.progress import RunProgress

    def copy_cells(writer: EvidenceWriter) -> None:
        for record in read_evidence(cells).records:
            writer.append(record)

    # Plain progress lines (Dagster keeps the step's stderr); the throughput floors follow the machine.
    progress = RunProgress(live=False)
    subject = replace(subject, calibration=stages.calibrate(progress=progress))
    records = stages.gate(subject, directory / EVIDENCE_NAME, copy_cells, progress=progress).records
    outcomes = Counter(str(record.outcome) for record in records)
    gates = Counter(str(record.gate) for record in records)
    return StageResult(
        files={"evidence": file_ref(directory / EVIDENCE_NAME)},
        facts={
            "records": len(records),
            "outcomes": dict(outcomes),
            "gates": dict(sorted(gates.items())),
            "decode_tok_s": decode_speeds(records),
        },
    )


def build_gate_results(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=ASSET,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={"python"},
        ins={name: dg.AssetIn(name) for name in ("checkpoint", "gguf", "apr", "safetensors", "inference_traces")},
        description="evidence.jsonl: every cell's records plus apr.qa's model-level gates (integrity, contract, "
        "structure, parity, golden output...) and runtime gates (determinism, throughput, GPU speedup).",
    )
    def gate_results(
        context: dg.AssetExecutionContext,
        settings: AprSettings,
        work: WorkRoot,
        checkpoint: StageRecord,
        gguf: StageRecord,
        apr: StageRecord,
        safetensors: StageRecord,
        inference_traces: StageRecord,
    ):
        import torch

        key = context.partition_key
        playbook = load(settings.playbooks(), key)
        artifacts = artifact_records(playbook, checkpoint, {"gguf": gguf, "apr": apr, "safetensors": safetensors})
        cuda = bool(torch.cuda.is_available())
        subject = subject_for(playbook, checkpoint, artifacts, workers=settings.workers, cuda=cuda)
        inputs = {
            "gates": playbook.gates.model_dump(mode="json"),
            "model": playbook.model.model_dump(mode="json"),
            "backends": [str(backend) for backend in playbook.matrix.backends],
            "cuda": cuda,
            "checkpoint": checkpoint.data_version,
            "apr": apr_code_digest("engine", "formats", "qa"),
            "artifacts": {name: record.data_version for name, record in artifacts.items()},
            "cells": inference_traces.files["evidence"].sha256,
        }
        record = run_stage(
            work.layout(),
            asset=ASSET,
            partition=key,
            code_version=CODE_VERSION,
            inputs=inputs,
            build=lambda directory: run_gates(subject, inference_traces.path("evidence"), directory),
        )
        metadata: dict[str, dg.MetadataValue] = {
            "records": dg.MetadataValue.int(record.facts["records"]),
            "outcomes": dg.MetadataValue.json(record.facts["outcomes"]),
            "gates": dg.MetadataValue.json(record.facts["gates"]),
        }
        speeds = record.facts.get("decode_tok_s") or {}
        cpu = [value for name, value in speeds.items() if name.endswith("/cpu")]
        metadata["decode_tok_s"] = dg.MetadataValue.json(speeds)
        if cpu:
            metadata["tok/s"] = dg.MetadataValue.float(float(median(cpu)))
        return stage_output(record, "evidence", metadata)

    return gate_results
