"""`apr eval` end to end on a tiny fixture model: records per problem, pass@1 summary, resume, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apr.engine import native
from apr.errors import AprError
from apr.eval.results import PROBLEMS_FILE, read_results, wilson_interval
from apr.eval.runner import EvalOptions
from apr.eval.sandbox import Limits
from apr.eval.session import EvalRequest, run_eval
from apr.eval.tasks import Task

# Direct prompts: the fixture models hold 512 positions, fewer than a templated HumanEval/0.
FAST = EvalOptions(max_tokens=4, batch_size=2, chat=False, limits=Limits(timeout_s=5.0))


def _request(model: Path, output: Path, limit: int, *, resume: bool, options: EvalOptions = FAST) -> EvalRequest:
    return EvalRequest(model=str(model), task=Task.HUMANEVAL, output=output, limit=limit, resume=resume,
                       options=options, device="cpu")  # fmt: skip


def test_records_every_problem_and_resume_skips_the_scored_ones(fixture_models, tmp_path: Path):
    model = fixture_models["qwen2"]["gguf"]
    first = run_eval(_request(model, tmp_path / "out", 2, resume=False))
    assert first["total"] == 2 and first["complete"] and first["runs"][0]["problems"] == 2
    records = read_results(tmp_path / "out" / PROBLEMS_FILE)
    assert sorted(records) == ["HumanEval/0", "HumanEval/1"]
    for record in records.values():  # a random model's four tokens solve nothing: scored, and failed
        assert record.status in ("failed", "timeout") and not record.passed and record.error
        assert len(record.prompt_sha256) == 64 and record.completion_tokens >= 1
    before = (tmp_path / "out" / PROBLEMS_FILE).read_text(encoding="utf-8")

    second = run_eval(_request(model, tmp_path / "out", 3, resume=True))
    after = (tmp_path / "out" / PROBLEMS_FILE).read_text(encoding="utf-8")
    assert after.startswith(before)  # the scored problems were neither redone nor rewritten
    assert [json.loads(line)["task_id"] for line in after.splitlines()[2:]] == ["HumanEval/2"]
    assert second["runs"][-1]["problems"] == 1 and len(second["runs"]) == 2
    assert second["total"] == 3 and second["pass@1"] == 0.0
    assert second["ci95"] == [0.0, round(wilson_interval(0, 3)[1], 6)]

    third = run_eval(_request(model, tmp_path / "out", 3, resume=True))  # nothing left: no engine, no new run
    assert third["runs"] == second["runs"] and third["engine"] == second["engine"] and third["total"] == 3
    assert (tmp_path / "out" / PROBLEMS_FILE).read_text(encoding="utf-8") == after


def test_rescore_reruns_stored_programs_and_resume_regenerates_sandbox_errors(fixture_models, tmp_path: Path):
    from dataclasses import replace

    from apr.eval.results import ResultsFolder

    model, out = fixture_models["qwen2"]["gguf"], tmp_path / "out"
    run_eval(_request(model, out, 2, resume=False))
    folder = ResultsFolder(out)
    records = read_results(folder.problems_path)
    # As if the sandbox had broken: no verdict on either problem.
    folder.rewrite(replace(r, status="error", error="the sandbox failed") for r in records.values())
    summary = run_eval(replace(_request(model, out, 2, resume=False), rescore=True))
    assert summary["rescored"] == 2 and summary["statuses"]["error"] == 0 and summary["total"] == 2
    rescored = read_results(folder.problems_path)
    assert {k: (r.completion, r.status, r.error) for k, r in rescored.items()} == {
        k: (r.completion, r.status, r.error) for k, r in records.items()
    }  # the same programs, run again, give the same verdicts
    folder.rewrite([replace(rescored["HumanEval/1"], status="error"), rescored["HumanEval/0"]])
    errored = run_eval(_request(model, out, 2, resume=True))
    assert errored["runs"][-1]["problems"] == 1  # only the problem without a verdict was generated again
    assert read_results(folder.problems_path)["HumanEval/1"].status != "error"


def test_a_folder_with_a_run_is_refused_without_resume_or_with_other_settings(fixture_models, tmp_path: Path):
    model = fixture_models["llama"]["gguf"]
    run_eval(_request(model, tmp_path / "out", 1, resume=False))
    with pytest.raises(AprError, match="--resume"):
        run_eval(_request(model, tmp_path / "out", 1, resume=False))
    other = EvalOptions(max_tokens=5, batch_size=2, chat=False, limits=Limits(timeout_s=5.0))
    with pytest.raises(AprError, match="max_tokens"):
        run_eval(_request(model, tmp_path / "out", 1, resume=True, options=other))


def test_a_torn_last_line_is_dropped_and_a_torn_middle_line_is_an_error(tmp_path: Path):
    good = {"task_id": "HumanEval/0", "prompt_sha256": "a" * 64, "completion": "x", "passed": True,
            "status": "passed", "error": "", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 1,
            "generate_s": 0.1, "exec_s": 0.1, "isolation": "namespaces+cgroup"}  # fmt: skip
    path = tmp_path / PROBLEMS_FILE
    path.write_text(json.dumps(good) + '\n{"task_id": "HumanEval/1", "compl', encoding="utf-8")
    assert list(read_results(path)) == ["HumanEval/0"]
    path.write_text('{"task_id": \n' + json.dumps(good) + "\n", encoding="utf-8")
    with pytest.raises(AprError, match=":1: not a problem record"):
        read_results(path)


def test_a_prompt_longer_than_the_context_fails_its_problem_without_generating(fixture_models, tmp_path: Path):
    chat = EvalOptions(max_tokens=4, batch_size=2, chat=True, limits=Limits(timeout_s=5.0))
    summary = run_eval(_request(fixture_models["qwen2"]["gguf"], tmp_path / "out", 2, resume=False, options=chat))
    records = read_results(tmp_path / "out" / PROBLEMS_FILE)
    too_long = [r for r in records.values() if r.prompt_tokens >= 512]  # HumanEval/1's templated prompt
    assert summary["total"] == 2 and too_long
    for record in too_long:
        assert not record.passed and record.completion_tokens == 0
        assert f"prompt's {record.prompt_tokens} tokens do not fit the model's 512" in record.error


def test_the_cli_refuses_a_task_without_its_data_in_one_line(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "apr.cli.main", "eval", "smollm2:135m", "--task", "mbpp", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: --task mbpp: no installable package ships") and done.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(
    not native.available(), reason=f"--kv-cache f16 needs the native kernels: {native.unavailable_reason()}"
)
def test_the_kv_cache_is_part_of_a_runs_settings(fixture_models, tmp_path: Path):
    """`apr eval --kv-cache f16` scores the model as a server with an fp16 cache runs it; the cache is recorded
    (the engine's description and run.json) and a resume must keep it, since it can change the completions."""
    from dataclasses import replace

    model, out = fixture_models["qwen2"]["gguf"], tmp_path / "out"
    half = run_eval(replace(_request(model, out, 1, resume=False), kv_cache="f16"))
    assert half["engine"]["kv_cache"] == "float16" and half["total"] == 1
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["kv_cache"] == "f16"
    with pytest.raises(AprError, match="kv_cache"):
        run_eval(_request(model, out, 2, resume=True))
    # A folder written before the setting was kept ran an f32 cache: it resumes as such, and only as such.
    before = tmp_path / "before"
    run_eval(_request(model, before, 1, resume=False))
    config = json.loads((before / "run.json").read_text(encoding="utf-8"))
    del config["kv_cache"]
    (before / "run.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(AprError, match="kv_cache"):
        run_eval(replace(_request(model, before, 2, resume=True), kv_cache="f16"))
    assert run_eval(_request(model, before, 2, resume=True))["total"] == 2
