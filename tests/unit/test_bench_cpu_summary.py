"""bench/cpu_summary.py: issue 22's targets from a cpu_session.sh directory; missing or broken JSON is never met."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "cpu_summary.py"


def engine_run(prefill_ratio: float, peer_prefill: float, roofline: float, batch: float) -> dict:
    """A bench_engine.py document with the fields the summary reads."""
    return {
        "results": {
            "apr": {"info": {"kernels": "apr native avx2 test"}},
            "llama.cpp": {"prefill_tok_s": {"median": peer_prefill}},
        },
        "ratios": {
            "prefill_tok_s apr/llama.cpp": prefill_ratio,
            "decode_tok_s apr/roofline": roofline,
            "batch_decode apr/apr single stream": batch,
        },
    }


def summarize(directory: Path) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads((directory / "summary.json").read_text())
    return done, {t["name"].split(" (")[0]: t for t in summary["targets"]}


def test_each_target_is_judged_on_its_own_run_and_missing_json_is_not_measured(tmp_path):
    # llama.cpp's plain kernels prefill faster here: the prefill target is that run's ratio, not the kinder one.
    (tmp_path / "engine-llama-default.json").write_text(json.dumps(engine_run(2.6, 100.0, 0.95, 4.0)))
    (tmp_path / "engine-llama-repack0.json").write_text(json.dumps(engine_run(1.9, 140.0, 0.88, 3.0)))
    (tmp_path / "prefill-long.json").write_text(
        json.dumps({"prompt_tokens": 4000, "ratios": {"prefill_tok_s apr/llama.cpp": 1.3}})
    )
    (tmp_path / "lookup.json").write_text("rc=0\n")  # a run whose JSON line was lost
    (tmp_path / "q4k8-mix.json").write_text(json.dumps({"kernel_l1_over_mix": 1.19, "kernel_l2_over_mix": "?"}))
    done, targets = summarize(tmp_path)
    prefill = targets["prefill-128 / llama.cpp"]
    assert (prefill["measured"], prefill["verdict"], prefill["detail"]) == (1.9, "not met", "llama.cpp --repack 0")
    assert targets["decode / memory roofline"]["measured"] == 0.88  # the lower of the two runs
    assert targets["decode / memory roofline"]["verdict"] == "not met"
    assert targets["8 streams decoded together / one stream"]["verdict"] == "met"
    assert targets["prefill of 4000 tokens / llama.cpp"]["verdict"] == "met"
    for name in ("lookup / apr plain", "lookup / llama.cpp lookup"):
        assert targets[name]["measured"] is None and targets[name]["verdict"] == "NOT MEASURED"
    assert "apr native avx2 test" in done.stdout
    # The instruction-mix figures are kept for the record, a non-number dropped rather than shown.
    assert json.loads((tmp_path / "summary.json").read_text())["q4k8_mix"] == {"kernel_l1_over_mix": 1.19}
    assert "kernel l1 over mix" in done.stdout


def test_a_lookup_speedup_with_other_replies_is_not_met(tmp_path):
    lookup = {
        "ratios": {"apr lookup / apr plain": {"median": 2.4}, "apr lookup / llama.cpp lookup": {"median": 1.5}},
        "identical": {"replies": 21, "of": 22},
    }
    (tmp_path / "lookup.json").write_text(json.dumps(lookup))
    _, targets = summarize(tmp_path)
    assert targets["lookup / apr plain"]["verdict"] == "not met (replies differ from plain decoding)"
    assert targets["prefill-128 / llama.cpp"]["verdict"] == "NOT MEASURED"


def test_a_missing_directory_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "absent")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not a directory" in done.stderr


def test_a_quick_session_meets_no_target(tmp_path):
    (tmp_path / "engine-llama-default.json").write_text(json.dumps(engine_run(2.6, 100.0, 0.95, 4.0)))
    (tmp_path / "QUICK").touch()
    done, targets = summarize(tmp_path)
    assert targets["prefill-128 / llama.cpp"]["verdict"] == "NOT MEASURED (QUICK run)"
    assert "QUICK run" in done.stdout.splitlines()[0]
