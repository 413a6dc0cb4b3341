"""The ``gate_results`` asset: apr.qa's model-level and runtime gates, merged with the cell evidence."""

from pathlib import Path

import dagster as dg

from pipelines.assets.inference import execution_plan, recorder_for
from pipelines.code_digest import apr_code_digest
from pipelines.playbooks import load
from pipelines.resources import AprSettings, WorkRoot
from pipelines.stage import StageResult, run_stage, stage_output
from pipelines.work_root import StageRecord, file_ref

CODE_VERSION = "1"
ASSET = "gate_results"
EVIDENCE_NAME = "evidence.jsonl"


def run_gates(playbook, checkpoint: StageRecord, artifacts: dict[str, StageRecord], cells: Path,
              directory: Path, workers: int, cuda: bool) -> StageResult:
    """Write ``evidence.jsonl`` in `apr certify`'s order: model-level gates, the matrix cells, runtime gates.

    The cells were run by ``inference_traces``; their records are copied in. Determinism reruns,
    throughput and GPU speedup are apr.qa's runtime gates over those records.
    """
    from collections import Counter

    from apr.qa.axes import Format
    from apr.qa.certify import Certification, CertifyOptions, expected_sha256
    from apr.qa.evidence import EvidenceWriter, read_evidence
    from apr.qa.gates.model_level import ModelGateInputs, ModelGateRun

    recorder = recorder_for(playbook, checkpoint, artifacts)
    plan = execution_plan(playbook, artifacts, workers, cuda)
    source = Format(checkpoint.facts["format"])
    inputs = ModelGateInputs(
        artifacts=dict(recorder.artifacts), digests=dict(recorder.sha256), source=source, gates=playbook.gates,
        expected_sha256=expected_sha256(playbook.model.ref) if playbook.gates.g0_integrity.verify_sha256 else None,
        chat=playbook.model.chat_template, cuda_available=cuda, backends=tuple(playbook.matrix.backends),
    )
    evidence = directory / EVIDENCE_NAME
    evidence.unlink(missing_ok=True)
    with EvidenceWriter(evidence) as writer:

        def emit(records: list) -> None:
            for record in records:
                writer.append(record)

        ModelGateRun(inputs, recorder, emit).run()
        emit(list(read_evidence(cells).records))
        # The runtime gates live on apr.qa's Certification; calling them keeps one implementation.
        # output=directory: it re-reads its evidence file, which must be this one.
        certification = Certification(CertifyOptions(playbook=playbook.source, model_path=playbook.model_path(),
                                                     output=directory, progress=False))
        certification.runtime_gates(plan, read_evidence(evidence).records, recorder, emit, frozenset(), source)
    records = read_evidence(evidence).records
    outcomes = Counter(str(record.outcome) for record in records)
    gates = Counter(str(record.gate) for record in records)
    return StageResult(files={"evidence": file_ref(evidence)},
                       facts={"records": len(records), "outcomes": dict(outcomes), "gates": dict(sorted(gates.items()))})


def build_gate_results(partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        name=ASSET,
        partitions_def=partitions,
        code_version=CODE_VERSION,
        group_name="certification",
        kinds={"python"},
        ins={name: dg.AssetIn(name) for name in ("checkpoint", "gguf", "apr", "safetensors", "inference_traces")},
        description="evidence.jsonl: every cell's records plus apr.qa's model-level gates (integrity, contract, "
                    "structure, parity, golden output...).",
    )
    def gate_results(context: dg.AssetExecutionContext, settings: AprSettings, work: WorkRoot,
                     checkpoint: StageRecord, gguf: StageRecord, apr: StageRecord, safetensors: StageRecord,
                     inference_traces: StageRecord):
        import torch

        key = context.partition_key
        playbook = load(settings.playbooks(), key)
        available = {"gguf": gguf, "apr": apr, "safetensors": safetensors}
        artifacts = {fmt.value: available[fmt.value] for fmt in playbook.matrix.formats}
        cuda = bool(torch.cuda.is_available())
        inputs = {
            "gates": playbook.gates.model_dump(mode="json"), "model": playbook.model.model_dump(mode="json"),
            "backends": [str(backend) for backend in playbook.matrix.backends], "cuda": cuda,
            "checkpoint": checkpoint.data_version, "apr": apr_code_digest("engine", "formats", "qa"),
            "artifacts": {name: record.data_version for name, record in artifacts.items()},
            "cells": inference_traces.files["evidence"].sha256,
        }
        record = run_stage(work.layout(), asset=ASSET, partition=key, code_version=CODE_VERSION, inputs=inputs,
                           build=lambda directory: run_gates(playbook, checkpoint, artifacts,
                                                             inference_traces.path("evidence"), directory,
                                                             settings.workers, cuda))
        return stage_output(record, "evidence", {
            "records": dg.MetadataValue.int(record.facts["records"]),
            "outcomes": dg.MetadataValue.json(record.facts["outcomes"]),
            "gates": dg.MetadataValue.json(record.facts["gates"]),
        })

    return gate_results
