"""The benchmark programs in bench/ run end to end on a fixture model and end with their JSON document.

Speed is never asserted here (benchmarks own that); these only keep the programs from rotting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(
    script: str | Path, *args: str, timeout: float = 300, unset: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess, dict[str, Any] | None]:
    """Run a bench program (``script``: a file name in bench/, run by this Python, or a built binary's path)
    offline, without the environment variables in ``unset``; returns the finished process and the JSON
    document of its last stdout line (None when that line is not one)."""
    command = [sys.executable, str(ROOT / "bench" / script)] if isinstance(script, str) else [str(script)]
    env = {**{k: v for k, v in os.environ.items() if k not in unset}, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    return done, report


def test_bench_depth_measures_decode_at_each_depth_and_skips_an_absent_peer(fixture_models):
    gguf = fixture_models["qwen2"]["gguf"]
    done, report = run_bench(
        "bench_depth.py",
        *("--model", str(gguf), "--depths", "0,40", "--prompt-tokens", "8", "--decode-tokens", "4"),
        *("--min-reps", "2", "--min-seconds", "0", "--warmup", "0"),
    )
    assert done.returncode == 0 and report is not None, done.stderr[-2000:]
    for depth in ("0", "40"):
        apr = report["results"]["apr"][depth]
        assert apr["reps"] >= 2 and apr["decode_tok_s"]["median"] > 0 and apr["prefill_tok_s"]["median"] > 0
    assert "llama.cpp" not in report["results"] and report["ratios"] == {}
    assert "llama.cpp: skipped" in done.stderr


def test_bench_depth_refuses_a_missing_model_without_a_traceback(tmp_path):
    done, report = run_bench("bench_depth.py", "--model", str(tmp_path / "none.gguf"), timeout=60)
    assert done.returncode == 2 and "no such GGUF file" in done.stderr and "Traceback" not in done.stderr
    assert report is None


# How the bench C programs build (their headers' line, at -O2: these tests check what they report, not speed).
C_BUILD = ("cc", "-O2", "-std=c11", "-D_DEFAULT_SOURCE", "-mavx2", "-mfma", "-mf16c", "-fopenmp")


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_bench_products_builds_and_reports_a_token(tmp_path):
    binary = tmp_path / "bench_products"
    source = str(ROOT / "bench" / "bench_products.c")
    build = subprocess.run([*C_BUILD, source, "-o", str(binary), "-lm"], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    done, report = run_bench(binary, "--reps", "1", "--pages", "huge", "--loads-only")
    assert done.returncode == 0 and report is not None, done.stderr
    assert report["loads_only"] is True and report["bytes"] > 0.9e9 and report["median_ms"] > 0
    assert run_bench(binary, "--reps", "0", timeout=60)[0].returncode == 1


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_bench_q4k8_mix_measures_the_kernel_against_its_mix_and_refuses_a_vnni_build(tmp_path):
    binary = tmp_path / "bench_q4k8_mix"
    source = str(ROOT / "bench" / "bench_q4k8_mix.c")
    build = subprocess.run([*C_BUILD, source, "-o", str(binary), "-lm"], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    done, report = run_bench(binary, "--rounds", "2", timeout=120)
    assert done.returncode == 0 and report is not None, done.stderr
    assert report["variant"] == 0 and report["clock_ghz"] > 0.3
    # The integer part alone is quicker than the whole mix (the float epilogue is ~a third of it).
    assert 0 < report["mix_int"]["ns"] < report["mix_full"]["ns"]
    assert report["kernel_l1_over_mix"] == pytest.approx(report["kernel_l1"]["ns"] / report["mix_full"]["ns"], rel=2e-3)
    assert run_bench(binary, "--rounds", "0", timeout=60)[0].returncode == 2
    vnni = subprocess.run(
        [*C_BUILD, "-mavxvnni", source, "-o", str(tmp_path / "vnni"), "-lm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert vnni.returncode != 0 and "build it without the VNNI" in vnni.stderr


def test_bench_chat_turns_reports_each_turn_and_that_reuse_changes_no_token(fixture_models):
    gguf = fixture_models["qwen2"]["gguf"]
    done, report = run_bench(
        "bench_chat_turns.py", "--model", str(gguf), "--max-tokens", "3", "--reps", "1", "--warmup", "0"
    )
    assert done.returncode == 0 and report is not None, done.stderr[-2000:]
    assert report["same_tokens"] is True and len(report["turns"]) == 5
    assert report["turns"][0]["cached_prompt_tokens"] == 0
    assert all(0 < turn["cached_prompt_tokens"] < turn["prompt_tokens"] for turn in report["turns"][1:])


def test_bench_lookup_compares_both_modes_on_code_edits_and_ends_with_json(fixture_models):
    done, report = run_bench(
        "bench_lookup.py",
        *("--model", str(fixture_models["llama"]["gguf"]), "--tasks", "2", "--max-tokens", "16"),
        *("--min-reps", "1", "--warmup", "0"),
        unset=("LLAMA_LOOKUP",),
    )
    assert done.returncode == 0 and report is not None, done.stderr[-2000:]
    assert report["bench"] == "apr-lookup-code-edit" and report["tasks"] == 2 and report["reps"] == 1
    assert "skipped" in report["llama_cpp"] and "llama.cpp: skipped" in done.stderr
    assert report["identical"] == {"replies": 2, "of": 2}
    assert report["plain_tok_s"]["median"] > 0 and report["lookup_tok_s"]["median"] > 0
    assert set(report["per_task_first_rep"]) == {"rename-variable", "add-type-hints"}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--llama-lookup", "{tmp}/no-llama-lookup"], "error: llama-lookup not found:"),
        (["--llama-lookup", "{tmp}"], "error: llama-lookup not found:"),
        (["--lookup", "0"], "--lookup must be at least 1"),
        (["--max-tokens", "0"], "--max-tokens must be at least 1"),
    ],
)
def test_bench_lookup_refuses_a_missing_peer_or_bad_arguments_in_one_line(tmp_path, arguments, message):
    """Refused before any model is loaded: the model named here does not even exist."""
    done, _ = run_bench(
        "bench_lookup.py",
        "--model",
        str(tmp_path / "none.gguf"),
        *(argument.format(tmp=tmp_path) for argument in arguments),
        timeout=60,
    )
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def _llama_lookup() -> Path | None:
    """llama.cpp's llama-lookup: $LLAMA_LOOKUP, else where bench/build_llama_cpp.sh puts it."""
    candidate = Path(os.environ.get("LLAMA_LOOKUP") or ROOT / ".llama-cpp" / "build" / "bin" / "llama-lookup")
    return candidate if candidate.is_file() else None


@pytest.mark.skipif(
    _llama_lookup() is None, reason="no llama-lookup ($LLAMA_LOOKUP or bench/build_llama_cpp.sh; CI builds none)"
)
def test_bench_lookup_runs_llama_cpp_plain_and_lookup_beside_apr(fixture_models):
    binary = _llama_lookup()
    done, report = run_bench(
        "bench_lookup.py",
        *("--model", str(fixture_models["qwen2"]["gguf"]), "--tasks", "1", "--max-tokens", "8"),
        *("--min-reps", "1", "--warmup", "0", "--threads", "1", "--llama-lookup", str(binary)),
    )
    assert done.returncode == 0 and report is not None, done.stderr[-2000:]
    peer = report["llama_cpp"]
    assert peer["program"] == str(binary) and peer["identical"]["of"] == 1
    assert set(report["ratios"]) == {
        "apr lookup / apr plain",
        "llama.cpp lookup / llama.cpp plain",
        "apr lookup / llama.cpp lookup",
        "apr plain / llama.cpp plain",
    }
    task = report["per_task_first_rep"]["rename-variable"]
    # llama.cpp read the same prompt text: its prompt is apr's token for token, and it generated a reply.
    assert task["llama.cpp"]["prompt_tokens"] == task["prompt_tokens"] and task["llama.cpp"]["tokens"] >= 1


def test_bench_kv_half_compares_the_two_cache_types_loaded_by_the_option(fixture_models):
    done, report = run_bench(
        "bench_kv_half.py",
        *("--model", str(fixture_models["qwen2"]["gguf"]), "--long-tokens", "60", "--decode-tokens", "3"),
        *("--reps", "1", "--warmup", "0", "--threads", "1"),
    )
    assert done.returncode == 0 and report is not None, done.stderr[-2000:]
    memory = report["memory"]
    assert (memory["f16"]["dtype"], memory["f32"]["dtype"]) == ("float16", "float32")
    assert memory["f16"]["bytes_per_position"] * 2 == memory["f32"]["bytes_per_position"] > 0
    assert report["gate_texts"]["tokens"] > 0 and report["long_text"]["tokens"] == 59
    assert report["decode_after_long_text"]["tok_s"]["f16"]["median"] > 0
