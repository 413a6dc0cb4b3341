"""Choosing where the graph runs: work roots as paths or file:// URIs, the committed run configs, the CLI options."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest

from apr.errors import AprError
from pipelines.jobs import JOB_NAME, ExecutorKind, certify_job, job_name
from pipelines.materialize import parse_args
from pipelines.resources import WorkRoot
from pipelines.runs import DEFAULT_RUN_CONFIGS, RUN_CONFIGS_DIR, load_run_config
from pipelines.work_root import work_root_path


def test_a_work_root_is_a_path_or_a_file_uri(tmp_path: Path) -> None:
    assert work_root_path(str(tmp_path)) == tmp_path
    assert work_root_path(f"file://{tmp_path}") == tmp_path
    assert work_root_path("file:///shared/apr%20work") == Path("/shared/apr work")
    assert WorkRoot(root=f"file://{tmp_path}").layout().root == tmp_path.resolve()


@pytest.mark.parametrize("location", ["s3://bucket/apr-work", "gs://bucket/w", "file://nfs-host/shared"])
def test_a_work_root_no_worker_could_run_from_is_refused_in_one_line(location: str) -> None:
    with pytest.raises(AprError) as err:
        work_root_path(location)
    assert "\n" not in str(err.value) and location in str(err.value)


@pytest.mark.parametrize("kind", [ExecutorKind.MULTIPROCESS, ExecutorKind.DASK])
def test_the_committed_run_configs_fit_the_job_of_their_executor(
    tmp_path: Path, kind: ExecutorKind, monkeypatch
) -> None:
    monkeypatch.setenv("APR_DASK_SCHEDULER", "tcp://scheduler.example:8786")  # what dask-existing.yaml reads
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir()
    (playbooks / "m-quick.playbook.yaml").write_text("apr_playbook: 1\n", encoding="utf-8")
    job = certify_job(str(playbooks), str(tmp_path / "work"), str(tmp_path / "certs"), kind.value, "m")
    assert (
        job.name == f"{JOB_NAME}__m" and job.executor_def.name == {"multiprocess": "multiprocess", "dask": "dask"}[kind]
    )
    configs = [DEFAULT_RUN_CONFIGS[kind]]
    if kind is ExecutorKind.DASK:
        configs.append(RUN_CONFIGS_DIR / "dask-existing.yaml")
    for path in configs:
        # Validating the executor section is what Dagster does before a run starts; a typo fails here.
        config = load_run_config(path)
        assert dg.validate_run_config(job, config), path


def test_a_run_config_that_is_not_a_mapping_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(AprError, match="a run config is a YAML mapping"):
        load_run_config(path)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--executor", "spark", "m"], "invalid choice: 'spark'"),
        (["--concurrent-runs", "0", "m"], "--concurrent-runs must be at least 1"),
        (["--run-config", "x.yaml", "m"], "configures --executor multiprocess or dask"),
    ],
)
def test_materialize_refuses_bad_executor_options_in_one_line(argv: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.value.code == 2 and expected in error, error


def test_materialize_reads_the_executor_options() -> None:
    args = parse_args(["--executor", "dask", "--concurrent-runs", "3", "m1", "m2"])
    assert (args.executor, args.concurrent_runs, args.run_config) == (ExecutorKind.DASK, 3, None)


def test_every_model_gets_its_own_job_name_so_dask_tasks_of_two_models_never_share_a_key() -> None:
    # dagster-dask submits "<job name>.<step>": equal names on one scheduler would be one task.
    names = [job_name(key) for key in ("smollm2-135m", "smollm2.135m", "smollm2_135m", "qwen2.5-coder-1.5b")]
    assert len(set(names)) == len(names) and job_name(None) == JOB_NAME
    assert names[2] == f"{JOB_NAME}__smollm2_135m"
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", name) for name in names)
