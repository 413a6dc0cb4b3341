"""`apr serve` as a command: bad arguments exit 2 with one error line, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def apr_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apr.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "ready at" not in result.stdout


def test_a_missing_model_is_a_one_line_error(tmp_path):
    assert_one_line_error(apr_serve(str(tmp_path / "absent.gguf"), "--port", "0"), "absent.gguf")


def test_a_busy_port_is_a_one_line_error(fixture_models):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = apr_serve(str(fixture_models["llama"]["gguf"]), "--port", str(port))
    assert_one_line_error(result, f"127.0.0.1:{port}")


def test_an_unresolvable_host_is_a_one_line_error(fixture_models):
    result = apr_serve(str(fixture_models["llama"]["gguf"]), "--host", "no such host", "--port", "0")
    assert_one_line_error(result, "--host")


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--device", "tpu"], ["--port", "-1"]])
def test_bad_options_are_usage_errors(fixture_models, args):
    result = apr_serve(str(fixture_models["llama"]["gguf"]), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_help_lists_the_options():
    result = apr_serve("--help", timeout=60)
    assert result.returncode == 0
    for option in ("--host", "--port", "--batch-size", "--api-key", "--device", "--max-context"):
        assert option in result.stdout


def test_serve_with_an_fp16_kv_cache_says_so_and_answers(fixture_models):
    """`apr serve --kv-cache f16`: /health names the cache the default model was loaded with; a request runs."""
    import httpx
    from serve_harness import start_server

    server = start_server(fixture_models["qwen2"]["gguf"], "--kv-cache", "f16", "--device", "cpu")
    try:
        assert httpx.get(f"{server.url}/health").json()["kv_cache"] == "float16"
        client = server.client()
        model_id = client.models.list().data[0].id
        reply = client.completions.create(model=model_id, prompt="hello", max_tokens=4, temperature=0.0)
        assert 1 <= reply.usage.completion_tokens <= 4
    finally:
        server.stop()
