"""The per-model certification job on a chosen Dagster executor, rebuildable in any worker process."""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from pathlib import Path

import dagster as dg

from apr.errors import AprError
from pipelines.partitions import REPO_ROOT, model_partitions

JOB_NAME = "certify_model"
_NOT_IN_JOB_NAMES = re.compile(r"[^A-Za-z0-9_]")
# Every asset a model's certification needs (the functional assets and the all-models table are not in it).
PER_MODEL_SELECTION = dg.AssetSelection.assets("certification").upstream()


class ExecutorKind(StrEnum):
    """Where the steps of one model's run execute."""

    IN_PROCESS = "in_process"  # one process, one step at a time (dagster.materialize; the default)
    MULTIPROCESS = "multiprocess"  # one child process per step on this machine (Dagster's multiprocess executor)
    DASK = "dask"  # one Dask task per step on a distributed cluster (dagster-dask's dask_executor)


def executor_definition(kind: ExecutorKind) -> dg.ExecutorDefinition:
    """The Dagster executor of a kind; dagster-dask is imported only when asked for (the `scale` extra)."""
    if kind is ExecutorKind.IN_PROCESS:
        return dg.in_process_executor
    if kind is ExecutorKind.MULTIPROCESS:
        return dg.multiprocess_executor
    try:
        from dagster_dask import dask_executor
    except ImportError:
        raise AprError("the dask executor needs dagster-dask and distributed: pip install -e '.[scale]'") from None
    return dask_executor


def job_name(partition: str | None) -> str:
    """``certify_model``, or ``certify_model__<model>`` for the runs of one model.

    dagster-dask names every task it submits ``<job name>.<step>``, and a Dask scheduler treats tasks of one
    name as one task: two models' runs on a shared cluster under one job name would be handed each other's
    results. A job name per model keeps their tasks apart (a hash is added when the key had to be changed,
    so that ``a-b`` and ``a.b`` stay apart too).
    """
    if partition is None:
        return JOB_NAME
    safe = _NOT_IN_JOB_NAMES.sub("_", partition)
    if safe != partition:
        safe += "_" + hashlib.sha256(partition.encode("utf-8")).hexdigest()[:8]
    return f"{JOB_NAME}__{safe}"


def certify_job(
    playbooks_dir: str,
    work_root: str,
    certifications_dir: str,
    executor: str,
    partition: str | None = None,
    work_cache: str | None = None,
) -> dg.JobDefinition:
    """The partitioned ``certify_model`` job over a playbooks folder, writing under a work root.

    Every argument is a plain string so that ``build_reconstructable_job`` can pass them to the
    process (a multiprocess child, a Dask worker) that rebuilds the job to run one of its steps.
    ``partition`` names the job after the model its runs certify (``job_name``); ``work_cache`` is where workers
    cache an object-store work root (``WorkRoot.cache_dir``).
    """
    from pipelines.definitions import build_assets, build_resources
    from pipelines.resources import AprSettings, WorkRoot

    partitions = model_partitions(Path(playbooks_dir))
    name = job_name(partition)
    job = dg.define_asset_job(
        name,
        selection=PER_MODEL_SELECTION,
        partitions_def=partitions,
        executor_def=executor_definition(ExecutorKind(executor)),
        description="One model's certification: checkpoint, the three artifacts, cells, gates, certification.",
    )
    defs = dg.Definitions(
        assets=build_assets(partitions),
        resources=build_resources(
            WorkRoot(root=work_root, certifications_dir=certifications_dir, cache_dir=work_cache),
            AprSettings(playbooks_dir=playbooks_dir),
        ),
        jobs=[job],
    )
    return defs.resolve_job_def(name)


def reconstructable_certify_job(
    playbooks_dir: Path,
    work_root: str,
    certifications_dir: Path,
    executor: ExecutorKind,
    partition: str,
    work_cache: str | None = None,
) -> dg.ReconstructableJob:
    """``certify_job`` for one model's runs as a pointer that worker processes follow (module, function, arguments)."""
    kwargs = {
        "playbooks_dir": str(playbooks_dir),
        "work_root": work_root,
        "certifications_dir": str(certifications_dir),
        "executor": executor.value,
        "partition": partition,
        "work_cache": work_cache,
    }
    return dg.build_reconstructable_job(
        "pipelines.jobs",
        "certify_job",
        reconstructable_kwargs=kwargs,
        reconstructor_working_directory=str(REPO_ROOT),
    )
