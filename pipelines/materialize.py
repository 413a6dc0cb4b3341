"""One command that materializes the whole certification graph for some models: ``python -m pipelines.materialize``.

    .venv/bin/python -m pipelines.materialize smollm2-135m qwen2.5-coder-1.5b

Each model (a partition key, or the model ref its playbook names, e.g. ``smollm2:135m``) runs
``checkpoint`` → artifacts → ``inference_traces`` → ``gate_results`` → ``certification``; then
``certification_table`` is rebuilt over every certified model. Runs are recorded in the Dagster
instance at ``$DAGSTER_HOME`` (default: ``dagster_home/`` in the repo), so ``dagster dev`` shows them.
Work whose inputs did not change is skipped (see docs/pipelines.md).

``--executor multiprocess`` or ``--executor dask`` runs each model as a Dagster run on that executor
(``--run-config`` picks the YAML in ``pipelines/run_configs/``), models in parallel up to
``--concurrent-runs`` (see docs/scale.md).

SIGTERM or SIGINT stops everything the command started (cluster, orchestrators, step processes and their
subprocesses), marks its unfinished runs canceled, removes half-staged results and exits 128 + the signal
number with one line on stderr (``pipelines.interrupts``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid
from pathlib import Path

from apr.errors import AprError
from apr.settings import current, export_omp_waits
from pipelines.interrupts import Interrupted, Signals, become_subreaper, signals_raise_interrupted, stop_descendants
from pipelines.jobs import ExecutorKind
from pipelines.partitions import DEFAULT_PLAYBOOKS_DIR, REPO_ROOT, TIER_SUFFIXES, discover_playbooks
from pipelines.work_root import discard_unfinished

REPO_DAGSTER_HOME = REPO_ROOT / "dagster_home"
IN_PROGRESS_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
# Every run one invocation launches carries this tag (a fresh id each time): an interrupted invocation cancels
# exactly its own unfinished runs, not another materialize's on the same instance.
INVOCATION_TAG = "apr/materialize"


def partition_for(playbooks_dir: Path, name: str) -> str:
    """A partition key from a key or from the model ref a playbook names (``smollm2:135m``)."""
    from pipelines.playbooks import model_ref

    found = discover_playbooks(playbooks_dir)
    if name in found:
        return name
    matches = [key for key in found if model_ref(playbooks_dir, key) == name]
    if len(matches) > 1:  # several tiers of one model: a ref means its everyday (lowest-tier) partition
        matches = [key for key in matches if not key.endswith(TIER_SUFFIXES)] or matches
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(found) or "none"
    raise AprError(
        f"{name!r} is neither a model partition nor the ref of exactly one playbook in {playbooks_dir} "
        f"(partitions: {known})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipelines.materialize", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="partition keys or model refs, e.g. smollm2-135m or smollm2:135m")
    parser.add_argument(
        "--work-root",
        default=None,
        help="work root: a path, a file:// URI or an object-store URI such as s3://bucket/prefix "
        "(default $APR_WORK or .apr-work/)",
    )
    parser.add_argument(
        "--work-cache",
        type=Path,
        default=None,
        help="this machine's cache of an object-store work root (default $APR_HOME/work-cache/<digest>)",
    )
    parser.add_argument("--certifications", type=Path, default=None, help="published folder (default certifications/)")
    parser.add_argument(
        "--playbooks",
        type=Path,
        default=DEFAULT_PLAYBOOKS_DIR,
        help="folder of model playbooks, one partition each (default playbooks/models)",
    )
    parser.add_argument("--no-table", action="store_true", help="skip rebuilding certification_table")
    parser.add_argument(
        "--executor",
        choices=[kind.value for kind in ExecutorKind],
        default=ExecutorKind.IN_PROCESS.value,
        help="where each model's steps run: in_process (default), multiprocess (a process per step), "
        "dask (a Dask task per step; needs the scale extra)",
    )
    parser.add_argument(
        "--run-config",
        type=Path,
        default=None,
        help="Dagster run config YAML for the executor (default pipelines/run_configs/multiprocess.yaml "
        "or dask-local.yaml)",
    )
    parser.add_argument(
        "--concurrent-runs",
        type=int,
        default=None,
        help="models run at once (default: all of them on dask, whose workers bound the work; 1 otherwise)",
    )
    args = parser.parse_args(argv)
    args.executor = ExecutorKind(args.executor)
    if args.concurrent_runs is not None and args.concurrent_runs < 1:
        parser.error(f"--concurrent-runs must be at least 1, not {args.concurrent_runs}")
    if args.run_config is not None and args.executor is ExecutorKind.IN_PROCESS:
        parser.error("--run-config configures --executor multiprocess or dask; in_process takes none")
    return args


def run(argv: list[str] | None = None, signals: Signals | None = None) -> int:
    """Materialize the models of ``argv``; with ``signals`` (the command's), an interrupt stops what it started."""
    args = parse_args(argv)
    signals = signals or Signals()
    import dagster as dg

    from pipelines.definitions import build_definitions
    from pipelines.resources import WorkRoot

    work_config = {}
    if args.work_root is not None:
        work_config["root"] = args.work_root if "://" in args.work_root else str(Path(args.work_root).resolve())
    if args.work_cache is not None:
        work_config["cache_dir"] = str(args.work_cache.resolve())
    if args.certifications is not None:
        work_config["certifications_dir"] = str(args.certifications.resolve())
    playbooks = args.playbooks.resolve()
    if not playbooks.is_dir():
        raise AprError(f"{args.playbooks}: --playbooks must be a folder of *.playbook.yaml files")
    defs = build_definitions(playbooks, WorkRoot(**work_config))
    keys = [partition_for(playbooks, name) for name in args.models]
    assets = [asset for asset in defs.assets or [] if isinstance(asset, dg.AssetsDefinition)]  # all ours are
    resources = dict(defs.resources or {})
    per_model = dg.AssetSelection.assets("certification").upstream()

    failed = []
    invocation = {INVOCATION_TAG: uuid.uuid4().hex}
    # The instance is opened from its folder, not through $DAGSTER_HOME, so nothing here edits the environment.
    home = (current().dagster_home or REPO_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        work = resources["work"]
        assert isinstance(work, WorkRoot)  # build_definitions puts it there
        try:
            if args.executor is ExecutorKind.IN_PROCESS:
                for key in keys:
                    signals.check()  # a signal during the previous model's run may have ended as its failure
                    started = time.monotonic()
                    result = dg.materialize(
                        assets,
                        selection=per_model,
                        partition_key=key,
                        instance=instance,
                        resources=resources,
                        raise_on_error=False,
                        tags={**invocation, "apr/model": key},
                    )
                    print("\n".join(report_lines(key, result, time.monotonic() - started)))
                    if interrupted_inside(result):
                        raise Interrupted(signal.SIGINT)  # Dagster handles SIGTERM as SIGINT in the thread of a run
                    if not result.success:
                        failed.append(key)
            else:
                failed += run_on_executor(args, playbooks, work, keys, instance, invocation, signals)
            signals.check()
            if not args.no_table:
                started = time.monotonic()
                result = dg.materialize(
                    assets,
                    selection=dg.AssetSelection.assets("certification_table"),
                    instance=instance,
                    resources=resources,
                    raise_on_error=False,
                    tags=invocation,
                )
                print("\n".join(report_lines("certification_table", result, time.monotonic() - started)))
                if not result.success:
                    failed.append("certification_table")
            signals.check()
        except Interrupted as interrupted:
            print(stop_after_interrupt(interrupted, instance, invocation, work, keys), file=sys.stderr)
            return interrupted.exit_code
    if failed:
        print(f"materialize: failed for {', '.join(failed)}; see the run logs in `dagster dev`", file=sys.stderr)
        return 1
    return 0


def stop_after_interrupt(interrupted: Interrupted, instance, invocation: dict[str, str], work, keys: list[str]) -> str:
    """Stop every process this invocation started, cancel its unfinished runs, drop half-staged results; one line.

    The cluster (if any) was closed while the exception passed its context; what is left are the orchestrators,
    step processes and their subprocesses (and orphans of killed ones: ``materialize`` is their subreaper)."""
    import dagster as dg

    started = time.monotonic()
    stopped = stop_descendants()
    unfinished = instance.get_runs(
        filters=dg.RunsFilter(tags=invocation, statuses=[dg.DagsterRunStatus(s) for s in IN_PROGRESS_STATUSES])
    )
    for dagster_run in unfinished:
        instance.report_run_canceled(dagster_run, message=f"python -m pipelines.materialize got {interrupted}")
    layout = work.layout()
    for key in keys:
        layout.discard_unfinished(key)
        discard_unfinished(work.certifications(), key)
    layout.discard_unfinished(None)
    return (
        f"materialize: interrupted by {interrupted}: stopped {len(stopped.pids)} process(es) it had started "
        f"in {time.monotonic() - started:.1f} s ({len(stopped.killed)} needed SIGKILL), canceled {len(unfinished)} unfinished run(s); "
        "nothing half-written was published"
    )


def run_on_executor(
    args: argparse.Namespace,
    playbooks: Path,
    work,
    keys: list[str],
    instance,
    invocation: dict[str, str],
    signals: Signals,
) -> list[str]:
    """Each model as a run of the ``certify_model`` job on the chosen executor; returns the models that failed."""
    from pipelines.jobs import reconstructable_certify_job
    from pipelines.runs import DEFAULT_RUN_CONFIGS, execute_partitions, load_run_config, shared_cluster

    run_config = load_run_config(args.run_config or DEFAULT_RUN_CONFIGS[args.executor])
    concurrent = args.concurrent_runs or (len(keys) if args.executor is ExecutorKind.DASK else 1)
    jobs = {
        key: reconstructable_certify_job(
            playbooks, work.root, work.certifications(), args.executor, key, work.cache_dir
        )
        for key in keys
    }
    failed = []
    with shared_cluster(args.executor, run_config) as shared:
        for outcome in execute_partitions(jobs, instance, shared, concurrent, invocation):
            signals.check()  # an orchestrator in this process may have recorded the signal as its run's failure
            print("\n".join(outcome.lines), flush=True)
            if not outcome.success:
                failed.append(outcome.partition)
    return failed


def interrupted_inside(result) -> bool:
    """True when Dagster itself caught a signal during an in-process run (it records it as a failed step)."""
    interrupts = {"DagsterExecutionInterruptedError", "KeyboardInterrupt"}
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None and error.cls_name in interrupts:
            return True
    return False


def report_lines(what: str, result, seconds: float) -> list[str]:
    """One line per materialized asset (reused or built, key metadata), then the run's verdict."""
    lines = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        metadata = materialization.metadata
        reused = metadata.get("reused")
        shown = {
            name: metadata[name].value
            for name in ("MQS", "grade", "status", "bytes", "tok/s", "cells", "records")
            if name in metadata
        }
        state = "reused" if reused is not None and reused.value else "built"
        lines.append(f"  {materialization.asset_key.to_user_string():<18} {state:<6} {shown}")
    for evaluation in result.get_asset_check_evaluations():
        verdict = "passed" if evaluation.passed else "FAILED"
        lines.append(
            f"  check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} {verdict}"
            + ("" if evaluation.passed else f" ({evaluation.description})")
        )
    lines.append(f"{what}: {'success' if result.success else 'FAILED'} in {seconds:.1f} s")
    return lines


def main() -> int:
    export_omp_waits()  # as the apr CLI does; the steps' processes and Dask workers inherit it
    become_subreaper()  # the orphans of processes stopped on an interrupt come back to us, to be stopped too
    try:
        with signals_raise_interrupted() as signals:
            return run(signals=signals)
    except AprError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except Interrupted as interrupted:  # before any run started (loading the playbooks, say)
        stopped = stop_descendants()
        print(
            f"materialize: interrupted by {interrupted} before any run started; stopped {len(stopped.pids)} "
            "process(es) it had started",
            file=sys.stderr,
        )
        return interrupted.exit_code


if __name__ == "__main__":
    sys.exit(main())
