"""Model partitions as concurrent Dagster runs on the multiprocess or the Dask executor (one shared cluster).

Dagster runs one partition per run, so models run in parallel as parallel runs; inside a run the
executor runs the independent steps of one model (the three conversions, say) in parallel. With
the Dask executor every run submits its steps to the same cluster: a ``local`` cluster in the run
config is started here once, for all runs, and handed to them as an ``existing`` address, so the
cluster's workers (not the number of models) bound how much runs at once.
"""

from __future__ import annotations

import copy
import multiprocessing
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apr.errors import AprError
from pipelines.jobs import JOB_NAME, ExecutorKind
from pipelines.partitions import REPO_ROOT

RUN_CONFIGS_DIR = REPO_ROOT / "pipelines" / "run_configs"
DEFAULT_RUN_CONFIGS = {
    ExecutorKind.MULTIPROCESS: RUN_CONFIGS_DIR / "multiprocess.yaml",
    ExecutorKind.DASK: RUN_CONFIGS_DIR / "dask-local.yaml",
}
PARTITION_TAG = "dagster/partition"
# Dask's nanny starts every worker with these set to 1: right for many small numpy tasks, wrong for a step that
# runs torch (conversions, parity gates). Unset, apr picks its threads from the free cores, as in process.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class RunOutcome:
    """How one model's run ended, with the report lines its orchestrating process printed."""

    partition: str
    run_id: str
    success: bool
    seconds: float
    lines: tuple[str, ...]


def load_run_config(path: Path) -> dict[str, Any]:
    """A Dagster run config document (YAML) as a dict; a one-line error when it is not one."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise AprError(
            f"{path}: not a readable YAML run config ({type(err).__name__}); see pipelines/run_configs/"
        ) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise AprError(f"{path}: a run config is a YAML mapping (execution:, ops:...), not {type(document).__name__}")
    return document


def _cluster_config(run_config: dict[str, Any]) -> dict[str, Any]:
    execution = run_config.get("execution") or {}
    return dict((execution.get("config") or {}).get("cluster") or {})


def root_cause(err: BaseException) -> str:
    """The innermost exception of a chain, as one line (distributed wraps a worker's TypeError twice)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}".splitlines()[0]


@contextmanager
def shared_cluster(kind: ExecutorKind, run_config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The run config every run gets: a Dask ``local`` cluster is started once here and passed by address."""
    cluster = _cluster_config(run_config)
    if kind is not ExecutorKind.DASK or (cluster and "local" not in cluster):
        yield run_config
        return
    import dask
    from distributed import LocalCluster

    # Dagster's steps are not thread-safe: one thread per worker, as dagster-dask sets for its own local clusters.
    options = {"threads_per_worker": 1, **(cluster.get("local") or {})}
    environ = dask.config.get("distributed.nanny.pre-spawn-environ")
    worker_environ = {name: value for name, value in environ.items() if name not in THREAD_VARIABLES}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ}):
        try:
            local = LocalCluster(**options)
        except (TypeError, RuntimeError) as err:  # a key of `local:` that LocalCluster or its workers do not take
            raise AprError(
                f"cluster.local in the run config: the LocalCluster did not start ({root_cause(err)}); "
                "its keys are distributed.LocalCluster's arguments"
            ) from None
    with local:
        shared = copy.deepcopy(run_config)
        shared.setdefault("execution", {}).setdefault("config", {})["cluster"] = {
            "existing": {"address": local.scheduler_address}
        }
        yield shared


def execute_partition(
    recon_job, instance_ref, run_config: dict[str, Any], partition: str, tags: Mapping[str, str] | None = None
) -> RunOutcome:
    """Orchestrate one model's run (its steps go to the executor's processes or cluster); top-level to be picklable.
    ``tags`` are added to the run's (``materialize`` finds the runs of one invocation by them)."""
    import dagster as dg

    from pipelines.materialize import report_lines

    started = time.monotonic()
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = dg.execute_job(
            recon_job,
            instance,
            run_config=run_config,
            tags={**(tags or {}), PARTITION_TAG: partition, "apr/model": partition},
            raise_on_error=False,
        )
        with result:
            seconds = time.monotonic() - started
            lines = report_lines(partition, result, seconds)
            return RunOutcome(partition, result.run_id, result.success, seconds, tuple(lines))


def execute_partitions(
    jobs: Mapping[str, Any],
    instance,
    run_config: dict[str, Any],
    concurrent_runs: int,
    tags: Mapping[str, str] | None = None,
) -> Iterator[RunOutcome]:
    """Run each partition's reconstructable job, up to ``concurrent_runs`` at once (each in its own process).

    Interrupted (an exception from a signal, or the generator closed early), it returns without waiting for the
    orchestrating processes: the caller stops them (``pipelines.interrupts``), as they may wait on steps for hours."""
    from dagster import DagsterInvalidConfigError, validate_run_config

    partitions = list(jobs)
    try:
        if partitions:  # here, in one line, not as an orchestrator's exception (Dagster's does not survive pickling)
            validate_run_config(jobs[partitions[0]].get_definition(), run_config)
        # Every run is orchestrated in a process of its own, even one at a time: Dagster takes over SIGINT and SIGTERM
        # in the thread that orchestrates a run (it interrupts the step and records a failed run), which must not be
        # this process's main thread, whose signals stop everything (pipelines.interrupts).
        # spawn: a fresh interpreter per orchestrator (Dagster and torch do not survive a fork of a busy process).
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=max(1, min(concurrent_runs, len(partitions))), mp_context=context)
        try:
            futures = [
                pool.submit(execute_partition, jobs[partition], instance.get_ref(), run_config, partition, tags)
                for partition in partitions
            ]
            for future in futures:
                yield future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # `with` would wait for every running orchestrator
            raise
        pool.shutdown(wait=True)
    except DagsterInvalidConfigError as err:
        problems = "; ".join(error.message for error in err.errors) or str(err)
        raise AprError(f"the run config does not fit the {JOB_NAME} job: {problems}") from None
