"""The seed's command lines as real subprocesses on fixture models: --version, pull --format, list --size,
rm, prune, inspect's natural order, run --benchmark --batch-size, run --trace and inspect of the trace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

APR = [sys.executable, "-m", "apr.cli.main"]


def apr(
    *args: str, home: Path | None = None, timeout: float = 300, wait_policy: str | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    if home is not None:
        env["APR_HOME"] = str(home)
    return subprocess.run(
        [*APR, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        encoding="utf-8",
    )


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stderr
    return done


def test_version_names_kernels_cpu_threads_torch_and_device() -> None:
    out = ok(apr("--version")).stdout
    keys = [line.split(":")[0] for line in out.splitlines()[1:]]
    assert re.match(r"^apr \d+\.\d+\.\d+$", out.splitlines()[0])
    assert keys == ["kernels", "cpu", "threads", "openmp waits", "torch", "python", "device"]
    # The CLI makes OpenMP's waiting threads sleep after a short spin unless the user chose otherwise.
    assert "openmp waits: spin 3000 times, then sleep (GOMP_SPINCOUNT)" in out.splitlines()
    assert "openmp waits: active (OMP_WAIT_POLICY)" in ok(apr("--version", wait_policy="active")).stdout.splitlines()

    # The same report (the threads line's reason quotes the load average, which moves between two calls).
    def steady(text: str) -> list[str]:
        return [line.split(" (")[0] if line.startswith("threads:") else line for line in text.splitlines()]

    assert steady(ok(apr("version")).stdout) == steady(out)


def test_pull_format_converts_once_and_is_cached_by_content(fixture_models, tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = str(fixture_models["llama"]["gguf"])
    first = json.loads(ok(apr("pull", source, "--format", "apr", "--json", "-q", home=home)).stdout)
    converted = first["converted"]
    assert converted["format"] == "apr" and not converted["reused"] and Path(converted["path"]).is_file()
    assert first["sha256"][:24] in converted["path"]
    again = json.loads(ok(apr("pull", source, "--format", "apr", "--json", "-q", home=home)).stdout)
    assert again["converted"] == {**converted, "reused": True}
    # The variant is a real APR model of the same tensors.
    described = json.loads(ok(apr("inspect", converted["path"], "--json")).stdout)
    assert described["format"] == "apr" and described["architecture"] == "llama"
    hf = json.loads(ok(apr("pull", source, "--format", "safetensors", "--json", "-q", home=home)).stdout)
    assert Path(hf["converted"]["path"], "config.json").is_file()
    same = json.loads(ok(apr("pull", source, "--format", "gguf", "--json", "-q", home=home)).stdout)
    assert same["converted"]["path"] == source  # already GGUF: nothing to convert


def test_list_size_rm_and_prune_manage_the_cache(fixture_models, tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = fixture_models["qwen2"]["gguf"]
    ok(apr("pull", str(source), "--format", "apr", "-q", home=home))
    sized = json.loads(ok(apr("list", "--size", "--json", home=home)).stdout)
    [entry] = sized["models"]
    assert entry["variant_bytes"] > 0 and sized["derived_bytes"]["converted"] == entry["variant_bytes"]
    text = ok(apr("list", "--size", home=home)).stdout
    assert "VARIANTS" in text and f"total under {home}" in text
    # A half-written conversion and an abandoned download are what prune finds.
    (home / "converted" / "0123456789abcdef01234567-apr").mkdir(parents=True)
    stale = home / "tmp" / "x.partial"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    dry = ok(apr("prune", "--dry-run", home=home)).stdout
    assert "half-written conversion" in dry and "unfinished download" in dry and stale.exists()
    ok(apr("prune", home=home))
    assert not stale.exists() and not (home / "converted" / "0123456789abcdef01234567-apr").exists()
    removed = ok(apr("rm", str(source), home=home)).stdout
    assert removed.startswith(f"removed {source}")
    assert source.is_file(), "rm never deletes a local model's own file"
    assert json.loads(ok(apr("list", "--json", home=home)).stdout) == []
    assert not list((home / "converted").iterdir())
    missing = apr("rm", "smollm2:135m", home=home)
    assert missing.returncode == 2 and missing.stderr.startswith("error: 'smollm2:135m' is not in the cache")


def test_inspect_lists_layers_in_natural_order(fixture_models) -> None:
    described = json.loads(ok(apr("inspect", str(fixture_models["qwen2"]["gguf"]), "--json")).stdout)
    layers = [int(m.group(1)) for t in described["tensors"] if (m := re.match(r"model\.layers\.(\d+)\.", t["name"]))]
    assert layers == sorted(layers) and len(set(layers)) > 1


def test_run_benchmark_batch_reports_aggregate_and_per_stream_rates(fixture_models) -> None:
    done = ok(
        apr(
            "run",
            str(fixture_models["llama"]["gguf"]),
            "--prompt",
            "hello",
            # Enough tokens that the process's CPU time (counted in 10 ms clock ticks) cannot read 0.
            "--max-tokens",
            "48",
            "--benchmark",
            "--batch-size",
            "3",
            "--device",
            "cpu",
            "--json",
        )
    )
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    bench = doc["benchmark"]
    assert bench["batch_size"] == 3 and len(bench["per_stream_tok_s"]) == 3
    assert bench["completion_tokens"] == sum(s["completion_tokens"] for s in bench["streams"]) > 0
    assert bench["aggregate_tok_s"] > 0 and all(rate > 0 for rate in bench["per_stream_tok_s"])
    assert 0 < bench["cpu_utilisation_pct"] and bench["threads"] >= 1 and bench["device"] == "cpu"
    # Greedy copies of one prompt are the same reply.
    assert len({s["completion_tokens"] for s in bench["streams"]}) == 1
    summary = [line for line in done.stderr.splitlines() if "aggregate" in line]
    assert len(summary) == 1 and "per stream" in summary[0] and "CPU" in summary[0]


@pytest.mark.parametrize("kind", ["attention", "hidden", "all"])
def test_run_trace_writes_a_file_inspect_reads(fixture_models, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "trace.jsonl"
    done = ok(
        apr(
            "run",
            str(fixture_models["gemma3"]["gguf"]),
            "--prompt",
            "hello there",
            "--max-tokens",
            "4",
            f"--trace={kind}",
            "--trace-output",
            str(out),
            "--raw",
        )
    )
    assert f"-> {out}" in done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    header, end = lines[0], lines[-1]
    assert header["format"] == "apr-trace" and header["dtype"] == "float32"
    assert end == {"type": "end", "records": len(lines) - 2}
    types = {record["type"] for record in lines[1:-1]}
    assert types == {"attention": {"attention"}, "hidden": {"hidden"}, "all": {"attention", "hidden"}}[kind]
    summary = json.loads(ok(apr("inspect", str(out), "--json")).stdout)
    assert summary["format"] == "apr-trace" and summary["tokens"] == len(header["tokens"])
    text = ok(apr("inspect", str(out))).stdout
    assert "blk.0" in text and "flags:" in text


def test_trace_options_are_checked_before_loading(fixture_models) -> None:
    model = str(fixture_models["llama"]["gguf"])
    lonely = apr("run", model, "-p", "x", "--trace-output", "t.jsonl")
    assert lonely.returncode == 2 and lonely.stderr.startswith("error: --trace-output needs --trace")
    packed = apr("run", model, "-p", "x", "--trace", "hidden", "--dtype", "bf16")
    assert packed.returncode == 2 and "reference fp32 path" in packed.stderr


@pytest.mark.integration
def test_real_model_pull_format_benchmark_batch_and_trace(real_model, tmp_path: Path) -> None:
    """The audit's command lines on smollm2:135m: pull --format apr, run --benchmark --batch-size 8, --trace."""
    source = str(real_model("smollm2:135m"))
    home = tmp_path / "home"
    pulled = json.loads(ok(apr("pull", source, "--format", "apr", "--json", "-q", home=home)).stdout)
    apr_file = pulled["converted"]["path"]
    bench = json.loads(
        ok(
            apr(
                "run",
                apr_file,
                "--prompt",
                "What is 2+2?",
                "--max-tokens",
                "8",
                "--benchmark",
                "--batch-size",
                "8",
                "--device",
                "cpu",
                "--json",
                home=home,
            )
        ).stdout.splitlines()[-1]
    )["benchmark"]
    assert bench["batch_size"] == 8 and len(bench["per_stream_tok_s"]) == 8 and bench["aggregate_tok_s"] > 0
    out = tmp_path / "attn.jsonl"
    ok(
        apr(
            "run",
            apr_file,
            "--prompt",
            "What is 2+2?",
            "--max-tokens",
            "4",
            "--trace=attention",
            "--trace-output",
            str(out),
            home=home,
        )
    )
    summary = json.loads(ok(apr("inspect", str(out), "--json")).stdout)
    assert len(summary["layers"]) == 30 and all(row["heads"] == 9 for row in summary["layers"])
    assert not [flag for flag in summary["flags"] if "NaN" in flag]
