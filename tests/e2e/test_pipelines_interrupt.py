"""SIGTERM to a running ``python -m pipelines.materialize`` (multiprocess and Dask executors): it exits
143 with one line, no process it started survives (the test is their subreaper, so even orphans are seen), its
Dagster runs end canceled, and nothing half-written is published."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest

from pipelines.interrupts import become_subreaper
from pipelines.partitions import REPO_ROOT

MODELS = ("fixture-a", "fixture-b")
PLAYBOOK = """\
apr_playbook: 1
name: {name}-quick
version: 1.0.0
tier: quick
model: {{ref: {name}, path: {gguf}, architecture: {architecture}, chat_template: true}}
matrix: {{formats: [gguf, safetensors, apr], backends: [cpu], modalities: [run]}}
scenarios: {{seed: 7, max_tokens: 8, pools: {{arithmetic: 1}}, per_cell: 1}}
execution: {{timeout_s: 120, failure_policy: collect_all}}
gates: {{CONTRACT-INVARIANTS: , THROUGHPUT: {{min_tok_s: {{cpu: 0.01, gpu: 1.0}}}}}}
"""
STARTUP_S = 240.0  # a loaded 2-core CI machine: the cluster, the workers' imports and the first step


def running(process: psutil.Process) -> bool:
    """Alive and the same process (psutil compares the start time, so a reused pid does not count)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Dask: two models, so two orchestrating processes beside the cluster's workers; multiprocess: one model (the command
# orchestrates it itself), whose step processes and their subprocesses are the levels below.
@pytest.mark.parametrize(("executor", "models"), [("multiprocess", MODELS[:1]), ("dask", MODELS)])
def test_sigterm_stops_every_process_materialize_started(
    tmp_path: Path, fixture_models, executor: str, models: tuple[str, ...]
) -> None:
    playbooks, work, certifications = tmp_path / "playbooks", tmp_path / "work", tmp_path / "certifications"
    playbooks.mkdir()
    # One checkpoint file per model: two checkpoint steps on one file at once are not what this test is about.
    for name, architecture in zip(models, ("llama", "qwen2"), strict=False):
        text = PLAYBOOK.format(name=name, gguf=fixture_models[architecture]["gguf"], architecture=architecture)
        (playbooks / f"{name}-quick.playbook.yaml").write_text(text, encoding="utf-8")
    home = tmp_path / "dagster"
    environ = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-m", "pipelines.materialize", "--executor", executor, "--concurrent-runs", "2"]
    argv += ["--no-table", "--work-root", str(work), "--certifications", str(certifications)]
    argv += ["--playbooks", str(playbooks), *models]
    me = psutil.Process()
    ours_before = {child.pid for child in me.children(recursive=True)}
    assert become_subreaper(), "the test needs Linux's child subreaper to see orphans"
    try:
        materialize = subprocess.Popen(argv, cwd=REPO_ROOT, env=environ, stderr=subprocess.PIPE, text=True)
        assert materialize.stderr is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(materialize.stderr or ()), daemon=True)
        reader.start()
        seen: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + STARTUP_S
        # Signal once a step runs in the executor's processes (Dagster logs STEP_START): every level exists then.
        while not any("STEP_START" in line for line in list(lines)):
            assert materialize.poll() is None, "".join(lines)[-2000:]
            assert time.monotonic() < deadline, "no step started in time"
            for child in psutil.Process(materialize.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
            time.sleep(0.2)
        for child in psutil.Process(materialize.pid).children(recursive=True):
            seen.setdefault(child.pid, child)
        materialize.send_signal(signal.SIGTERM)
        materialize.wait(timeout=120)
        reader.join(timeout=10)
        stderr = "".join(lines)
        (tmp_path / "materialize.stderr").write_text(stderr)  # kept for a failure's diagnosis (pytest keeps failed)
        # A resource tracker ends on its own once its owner has (it reads the owner's pipe): a few seconds' grace.
        psutil.wait_procs([process for process in seen.values() if running(process)], timeout=5)
        survivors = [process for process in seen.values() if running(process)]
        orphans = [child for child in me.children(recursive=True) if child.pid not in ours_before]
        psutil.wait_procs(orphans, timeout=5)  # reap any that ended as zombies of this process
    finally:
        become_subreaper(False)
    # Orchestrators or step processes, workers, subprocesses: several processes were started and stopped.
    assert len(seen) >= 2, seen
    assert survivors == [] and [p for p in orphans if running(p)] == [], (survivors, orphans)
    message = stderr.strip().splitlines()[-1]
    assert materialize.returncode == 143 and message.startswith("materialize: interrupted by SIGTERM: stopped"), (
        materialize.returncode,
        stderr[-3000:],
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
    assert {run.tags["apr/model"] for run in runs} == set(models)
    assert all(run.status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE) for run in runs), [
        run.status for run in runs
    ]
    # No staging folder left; a published folder (none is expected this early) would be complete.
    assert not [path for path in work.rglob(".*") if path.is_dir()]
    assert not certifications.exists() or not list(certifications.glob(".*"))
