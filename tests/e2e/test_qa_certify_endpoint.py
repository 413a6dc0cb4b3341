"""`apr certify --endpoint`: a running `apr serve` (a separate process on a free loopback port) certified as a
remote OpenAI-compatible endpoint through the real CLI; killed mid-run it gives INCONCLUSIVE, never BLOCKED; bad
input ends in one line. A second server implementation, llama.cpp's llama-server, when it was built here."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from serve_harness import RunningServer, start_server

from apr.qa.evidence import Outcome, read_evidence
from apr.qa.gates.catalog import ENDPOINT_GATES, GateId
from apr.qa.infra import InfraCause
from apr.qa.score import compute_mqs

KEY_ENV = "APR_ENDPOINT_TEST_KEY"
KEY = "sk-endpoint-test-do-not-write-3f9a"
NOT_APPLICABLE = {
    GateId.G0_INTEGRITY,
    GateId.CONTRACT_INVARIANTS,
    GateId.STRUCTURE,
    GateId.TOKENIZER_PARITY,
    GateId.FORMAT_PARITY,
}
# A random-weight fixture answers; what it answers is noise, so the oracles only ask for a reply.
PLAYBOOK = """\
apr_playbook: 1
name: fixture-endpoint
tier: smoke
model: {{ref: fixture-qwen2}}
{endpoint}
scenarios:
  seed: 7
  max_tokens: 8
  pools: {{arithmetic: 0}}
  prompts:
{prompts}
execution: {{timeout_s: 60}}
gates:
  CONTRACT-INVARIANTS:
  STRUCTURE:
  TOKENIZER-PARITY:
  FORMAT-PARITY:
  DETERMINISM:
  THROUGHPUT: {{min_tok_s: {{cpu: 0.01}}}}
"""


def playbook_text(endpoint: str, prompts: int) -> str:
    lines = [
        f'    - {{text: "Say something about the number {n}", oracles: [{{name: non_empty}}]}}' for n in range(prompts)
    ]
    lines.append('    - {text: "", allows_refusal: true}')
    return PLAYBOOK.format(endpoint=endpoint, prompts="\n".join(lines))


def apr_certify(*args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "apr.cli.main", "certify", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def served_model(server: RunningServer, api_key: str = "unused") -> str:
    return server.client(api_key).models.list().data[0].id


@pytest.fixture(scope="module")
def keyed_server(fixture_models):
    server = start_server(fixture_models["qwen2"]["gguf"], "--api-key", KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def certified(keyed_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("endpoint")
    name = served_model(keyed_server, KEY)
    endpoint = f'endpoint: {{url: "{keyed_server.base_url}", served_model: "{name}", api_key_env: {KEY_ENV}}}'
    playbook = folder / "endpoint.playbook.yaml"
    playbook.write_text(playbook_text(endpoint, prompts=2))
    output = folder / "out"
    result = apr_certify(str(playbook), "-o", str(output), "--quiet", env={KEY_ENV: KEY}, cwd=folder)
    return keyed_server, name, output, result


def test_a_running_apr_serve_is_certified_as_an_endpoint(certified):
    server, name, output, result = certified
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("CERTIFIED (endpoint)"), result.stdout
    records = read_evidence(output / "evidence.jsonl").records
    assert all(r.provenance.endpoint is not None for r in records)
    endpoints = [r.provenance.endpoint for r in records if r.provenance.endpoint is not None]
    assert {(e.url, e.served_model, e.api_key_env) for e in endpoints} == {(server.base_url, name, KEY_ENV)}
    assert all(e.server.get("server") == "uvicorn" for e in endpoints)  # the server's own header, as it sent it
    replies = [r for r in records if r.gate is GateId.G2_INFERENCE and r.outcome is Outcome.CORROBORATED]
    assert len(replies) == 3 and all(r.scenario.modality == "serve" for r in replies)
    throughput = next(r for r in records if r.gate is GateId.THROUGHPUT)
    assert throughput.outcome is Outcome.CORROBORATED and throughput.measured and throughput.measured > 0
    assert throughput.metrics["ttft_s"] and throughput.metrics["tokens_from"] == "usage"


def test_weight_level_gates_are_not_applicable_never_passed_and_never_planned(certified):
    _, _, output, _ = certified
    records = read_evidence(output / "evidence.jsonl").records
    inapplicable = [r for r in records if r.outcome is Outcome.NOT_APPLICABLE]
    assert {r.gate for r in inapplicable} == NOT_APPLICABLE
    assert all(r.n_compared == 0 and "not applicable" in r.reason for r in inapplicable)
    assert not any(r.gate in NOT_APPLICABLE and r.outcome is not Outcome.NOT_APPLICABLE for r in records)
    planned = {gate for r in records for gate in r.provenance.gates or ()}
    assert planned and planned <= ENDPOINT_GATES and not planned & NOT_APPLICABLE
    junit = (output / "junit.xml").read_text()
    assert junit.count("not applicable:") == len(inapplicable)  # <skipped>, never a passing testcase


def test_the_endpoint_mqs_is_scored_over_the_categories_that_apply_as_documented(certified):
    _, _, output, _ = certified
    records = read_evidence(output / "evidence.jsonl").records
    summary = json.loads((output / "mqs.json").read_text())
    assert summary["kind"] == "endpoint" and summary["status"] == "CERTIFIED"
    inapplicable = {c["category"] for c in summary["categories"] if not c["applicable"]}
    assert inapplicable == {"integrity", "parity"} and summary["scale"] == 200 + 200 + 50 + 100
    points = sum(c["points"] for c in summary["categories"])
    assert summary["raw"] == math.floor(1000 * points / summary["scale"] + 1e-9) == summary["score"] == 1000
    assert summary["gateways"]["G0-INTEGRITY"] == "not_applicable"
    assert compute_mqs(records).score == summary["score"]  # a rendering of the evidence alone
    table = (output / "models.csv").read_text().splitlines()
    assert table[1].endswith(f",endpoint,{records[0].provenance.endpoint.url}")  # type: ignore[union-attr]


def test_the_api_key_is_never_written(certified):
    _, _, output, result = certified
    written = [path for path in output.rglob("*") if path.is_file()]
    assert written and not [path for path in written if KEY in path.read_text(errors="replace")]
    assert KEY not in result.stdout + result.stderr


def test_an_endpoint_killed_mid_run_is_inconclusive_never_blocked_and_resume_asks_only_the_rest(
    fixture_models, tmp_path
):
    server = start_server(fixture_models["qwen2"]["gguf"])
    try:
        name = served_model(server)
        playbook = tmp_path / "endpoint.playbook.yaml"
        # Short backoffs: the first request after the kill spends its retries in a fraction of a second.
        playbook.write_text(playbook_text(f'endpoint: {{url: "{server.base_url}", backoff_s: 0.05}}', prompts=4))
        argv = [sys.executable, "-m", "apr.cli.main", "certify", str(playbook), "--served-model", name]
        argv += ["-o", str(tmp_path / "out")]
        run = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert run.stderr is not None  # started with stderr=PIPE
        progress = []
        for line in run.stderr:  # the first cell answered: now the endpoint dies
            progress.append(line)
            if "[cells 1/" in line:
                break
        server.stop(signal.SIGKILL)
        stdout, rest = run.communicate(timeout=120)
    finally:
        server.stop()
    assert run.returncode == 3, stdout + "".join(progress) + rest
    assert stdout.startswith("INCONCLUSIVE (endpoint)") and "Traceback" not in rest
    evidence = tmp_path / "out" / "evidence.jsonl"
    records = read_evidence(evidence).records
    assert not [r for r in records if r.outcome.is_failure], "a dead endpoint is no evidence against the model"
    stopped = [r for r in records if r.outcome is Outcome.INCONCLUSIVE]
    assert stopped and {r.cause.value for r in stopped if r.cause} == {"endpoint-unreachable"}
    assert any(r.gate is GateId.G2_INFERENCE and r.outcome is Outcome.CORROBORATED for r in records)
    assert json.loads((tmp_path / "out" / "mqs.json").read_text())["status"] == "INCONCLUSIVE"

    # The endpoint is back (on another port): --resume keeps what was answered and asks only what was not.
    first_lines = evidence.read_text().splitlines()
    answered = {
        r.scenario.prompt_id for r in records if r.gate is GateId.G3_STABILITY and r.outcome is Outcome.CORROBORATED
    }
    server = start_server(fixture_models["qwen2"]["gguf"])
    try:
        resumed = apr_certify(
            str(playbook),
            "--served-model",
            name,
            "--endpoint",
            server.base_url,
            "-o",
            str(tmp_path / "out"),
            "--resume",
            "--quiet",
            cwd=tmp_path,
        )
    finally:
        server.stop()
    assert resumed.returncode == 0 and resumed.stdout.startswith("CERTIFIED (endpoint)"), (
        resumed.stdout + resumed.stderr
    )
    assert "carried over" in resumed.stdout
    again = read_evidence(evidence).records
    assert not [r for r in again if r.outcome is Outcome.INCONCLUSIVE]
    lines = evidence.read_text().splitlines()
    carried = [line for line in first_lines if line in lines]  # byte for byte: carried over, never asked again
    assert answered and all(
        any(f'"prompt_id":"{prompt_id}"' in line.replace(" ", "") for line in carried) for prompt_id in answered
    )
    assert [r.scenario.prompt_id for r in again if r.gate is GateId.G3_STABILITY].count(next(iter(answered))) == 1
    keys = [r.key for r in again if r.gate is not GateId.DETERMINISM]
    assert len(keys) == len(set(keys)), "a resumed run records every unit once"
    [archived] = (tmp_path / "out" / "runs").glob("*/evidence.jsonl")  # the interrupted run, as it was
    assert archived.read_text().splitlines() == first_lines


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--endpoint", "http://127.0.0.1:{port}/v1", "--served-model", "m"], {}, "cannot reach the endpoint"),
        (["--endpoint", "ftp://example.invalid/v1", "--served-model", "m"], {}, "not an http:// or https:// URL"),
        (["--endpoint", "{url}", "--served-model", "m", "--api-key-env", "APR_NO_SUCH_KEY"], {}, "is not set"),
        (["--endpoint", "{url}", "--served-model", "m", "--api-key-env", KEY_ENV], {KEY_ENV: KEY}, "does not serve"),
        (["--endpoint", "{url}", "--served-model", "m"], {}, "refuses the API key"),
    ],
    ids=["unreachable", "bad-url", "missing-key-env", "unknown-model", "no-key"],
)
def test_bad_endpoint_input_ends_in_one_line(keyed_server, tmp_path, args, env, expected):
    filled = [a.format(port=_closed_port(), url=keyed_server.base_url) for a in args]
    result = apr_certify(*filled, "-o", str(tmp_path / "out"), env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


LLAMA_SERVER = Path(
    os.environ.get("APR_LLAMA_SERVER") or Path(__file__).resolve().parents[2] / ".llama-cpp/build/bin/llama-server"
)


@pytest.mark.integration
@pytest.mark.skipif(
    not LLAMA_SERVER.is_file(), reason=f"no llama-server at {LLAMA_SERVER}: bench/build_llama_cpp.sh builds it"
)
def test_llama_cpp_server_is_certified_as_a_different_implementation(real_model, tmp_path):
    import time
    import urllib.request

    port = _closed_port()
    argv = [str(LLAMA_SERVER), "-m", str(real_model("smollm2:135m")), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--alias", "smollm2", "-c", "2048", "-t", "2", "--log-disable"]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:  # /health answers 200 once the model is loaded
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "llama-server did not come up"
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/v1"
        result = apr_certify(
            "--endpoint", url, "--served-model", "smollm2", "--tier", "smoke", "-o", str(tmp_path / "out"), cwd=tmp_path
        )
    finally:
        server.terminate()
        server.wait(30)
    assert result.returncode in (0, 1), result.stdout + result.stderr  # a verdict on the model, not the machine
    records = read_evidence(tmp_path / "out" / "evidence.jsonl").records
    assert all("llama.cpp" in r.provenance.endpoint.server.get("server", "") for r in records if r.provenance.endpoint)
    assert not [r for r in records if r.gate is GateId.G3_STABILITY and r.outcome is not Outcome.CORROBORATED]
    assert {r.gate for r in records if r.outcome is Outcome.NOT_APPLICABLE} >= {GateId.G0_INTEGRITY}
    assert next(r for r in records if r.gate is GateId.G1_LOAD).outcome is Outcome.CORROBORATED


FEATURES = {GateId.FIM, GateId.TOOL_CALLS, GateId.JSON_MODE, GateId.EMBEDDINGS}


def feature_gates():
    from apr.qa.gates.thresholds import GateSet

    settings = {"cases": 1, "max_tokens": 16}
    return GateSet.model_validate(
        {"FIM": {**settings, "run_tests": False}, "TOOL-CALLS": settings, "JSON-MODE": settings, "EMBEDDINGS": {}}
    )


def test_serve_feature_gates_judge_an_endpoint_by_its_answers(keyed_server, fixture_models):
    from apr.qa.endpoint.features import endpoint_feature_checks
    from apr.qa.gates.serve_features import support_of

    name = served_model(keyed_server, KEY)
    found = endpoint_feature_checks(feature_gates(), keyed_server.client(KEY), name, 60.0)
    by_gate = {gate: [c for c in found if c.gate is gate] for gate in FEATURES}
    assert all(by_gate.values()), by_gate  # every enabled gate left a record
    # What apr serve refuses for this checkpoint (no FIM tokens, a template without tools) is a 400 it does not
    # take: not applicable, with the server's words; what it serves is judged by the oracle, never skipped.
    support = support_of(fixture_models["qwen2"]["gguf"])
    for gate, checks in by_gate.items():
        if support.lacks(gate) is not None:
            assert [c.outcome for c in checks] == [Outcome.NOT_APPLICABLE] and "HTTP 400" in checks[0].reason, checks
        else:
            assert all(c.outcome in (Outcome.CORROBORATED, Outcome.FALSIFIED) and c.n_compared for c in checks)
    assert by_gate[GateId.EMBEDDINGS][0].outcome is not Outcome.NOT_APPLICABLE  # apr serve serves /v1/embeddings


def test_serve_feature_gates_on_an_unreachable_endpoint_are_inconclusive(tmp_path):
    import openai

    from apr.qa.endpoint.features import endpoint_feature_checks

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{_closed_port()}/v1", api_key="unused", max_retries=0)
    found = endpoint_feature_checks(feature_gates(), client, "m", 5.0)
    assert {c.gate for c in found} == FEATURES
    assert {(c.outcome, c.cause) for c in found} == {(Outcome.INCONCLUSIVE, InfraCause.ENDPOINT_UNREACHABLE)}
