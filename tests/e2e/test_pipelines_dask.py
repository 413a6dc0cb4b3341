"""The certification graph on dagster-dask's executor over a distributed.LocalCluster of two worker processes:
the committed run config, steps spread over the workers, and the same evidence verdicts as the in-process run."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pipelines_support import MODEL, verdicts

from apr.qa.evidence import read_evidence
from apr.qa.score import compute_mqs
from pipelines.jobs import ExecutorKind, reconstructable_certify_job
from pipelines.runs import DEFAULT_RUN_CONFIGS, execute_partitions, load_run_config, shared_cluster
from pipelines.work_root import WorkLayout

PER_MODEL = {"checkpoint", "gguf", "apr", "safetensors", "inference_traces", "gate_results", "certification"}


def step_pids(instance: dg.DagsterInstance, run_id: str) -> set[int]:
    """The processes that ran the run's steps (every Dagster event carries the pid that emitted it)."""
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    return {record.dagster_event.pid for record in records if record.dagster_event is not None}


def test_dask_local_cluster_certifies_like_the_in_process_run(
    pipeline_graph: dict, in_process_run: dict, tmp_path: Path
) -> None:
    run_config = load_run_config(DEFAULT_RUN_CONFIGS[ExecutorKind.DASK])
    assert run_config["execution"]["config"]["cluster"]["local"]["n_workers"] == 2
    work, certifications = tmp_path / "work", tmp_path / "certifications"
    # The work root as a file:// URI: the form a shared mount takes in a cluster's run config.
    job = reconstructable_certify_job(pipeline_graph["playbooks"], f"file://{work}", certifications, ExecutorKind.DASK)
    with dg.instance_for_test() as instance, shared_cluster(ExecutorKind.DASK, run_config) as shared:
        address = shared["execution"]["config"]["cluster"]["existing"]["address"]
        assert address.startswith("tcp://127.0.0.1:")  # one cluster for every run, passed by address
        [outcome] = execute_partitions(job, instance, shared, [MODEL], concurrent_runs=1)
        pids = step_pids(instance, outcome.run_id)
    assert outcome.success, "\n".join(outcome.lines)
    built = {line.split()[0] for line in outcome.lines if line.startswith("  ") and not line.startswith("  check")}
    assert built == PER_MODEL
    # The steps ran in the cluster's two worker processes, not in this (orchestrating) one.
    assert len(pids) == 2 and os.getpid() not in pids, pids

    for asset in PER_MODEL:
        assert WorkLayout(work).read_record(asset, MODEL) is not None, asset
    expected = verdicts(in_process_run["evidence"])
    got = verdicts(certifications / MODEL / "evidence.jsonl")
    assert len(got) == len(expected) > 10
    assert got == expected
    # The certification the dask run published scores the in-process evidence exactly.
    certification = WorkLayout(work).read_record("certification", MODEL)
    assert certification is not None
    mqs = compute_mqs(read_evidence(in_process_run["evidence"]).records)
    facts = certification.facts
    assert (facts["mqs"], facts["raw"], facts["grade"], facts["status"], facts["gateways_passed"]) == (
        mqs.score,
        mqs.raw,
        mqs.grade,
        mqs.status.value,
        mqs.gateways_passed,
    )
