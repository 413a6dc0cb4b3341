"""`apr certify` as a process on a shared machine: killed with SIGKILL mid-run it leaves no `apr serve` behind,
and a re-run into a folder with evidence keeps the earlier run instead of truncating it, reading nothing
outside the folder it was given."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from apr.qa.evidence import read_evidence

SERVE_PLAYBOOK = """\
apr_playbook: 1
name: fixture-orphans-smoke
tier: smoke
model: {{ref: fixture-qwen2, path: "{model}", architecture: qwen2}}
matrix: {{formats: [gguf], backends: [cpu], modalities: [serve]}}
scenarios:
  seed: 7
  max_tokens: 4
  pools: {{arithmetic: 0}}
  prompts: [{{text: "Hello there", oracles: [{{name: non_empty}}]}}]
execution: {{timeout_s: 600}}
"""


def _children(pid: int) -> dict[int, str]:
    """Live (not zombie) processes whose parent is ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"  # a zombie is dead, only not yet reaped


def test_sigkill_of_certify_mid_run_leaves_no_child_alive(fixture_models, tmp_path):
    playbook = tmp_path / "serve.playbook.yaml"
    playbook.write_text(SERVE_PLAYBOOK.format(model=fixture_models["qwen2"]["gguf"]))
    certify = subprocess.Popen(
        [sys.executable, "-m", "apr.cli.main", "certify", str(playbook), "-o", str(tmp_path / "out"), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        deadline = time.monotonic() + 300
        served: dict[int, str] = {}
        while time.monotonic() < deadline and not served and certify.poll() is None:
            served = {pid: cmd for pid, cmd in _children(certify.pid).items() if " serve " in cmd}
            time.sleep(0.05)
        assert served, "apr certify never started its serve cell"
        certify.send_signal(signal.SIGKILL)  # no handler, no cleanup of ours runs
        certify.wait(timeout=30)
        gone_by = time.monotonic() + 10
        while time.monotonic() < gone_by and any(_alive(pid) for pid in served):
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in served), f"orphaned: {served}"
    finally:
        if certify.poll() is None:
            certify.kill()


STAND_IN = (sys.executable, str(Path(__file__).parents[1] / "unit" / "qa_exec_stand_in_apr.py"))


def _certify(playbook: Path, output: Path, **options):
    from apr.qa.certify import CertifyOptions, certify

    return certify(
        CertifyOptions(playbook=playbook, output=output, progress=False, apr_argv=STAND_IN, calibrate=False, **options)
    )


def test_a_rerun_keeps_the_earlier_run_and_reads_nothing_outside_its_folder(fixture_models, tmp_path):
    playbook = tmp_path / "rerun.playbook.yaml"
    playbook.write_text(
        textwrap.dedent(f"""\
        apr_playbook: 1
        name: fixture-rerun-smoke
        tier: smoke
        model: {{ref: fixture-llama, path: "{fixture_models["llama"]["gguf"]}", architecture: llama}}
        matrix: {{formats: [gguf], backends: [cpu], modalities: [run]}}
        scenarios:
          pools: {{arithmetic: 0}}
          prompts: [{{text: "What is 2+2?", oracles: [{{name: non_empty}}]}}]
        gates:
          CONTRACT-INVARIANTS:
        """)
    )
    # A sibling folder holding a corrupt evidence file: reading it would stop the run with an error.
    (tmp_path / "someone-else").mkdir()
    (tmp_path / "someone-else" / "evidence.jsonl").write_text("not evidence\n")
    output = tmp_path / "out"

    first = _certify(playbook, output)
    first_evidence = first.evidence.read_bytes()
    first_mqs = json.loads((output / "mqs.json").read_text())
    second = _certify(playbook, output)

    assert first.archived is None and second.archived is not None
    assert second.archived.parent == output / "runs"
    assert (second.archived / "evidence.jsonl").read_bytes() == first_evidence  # kept byte for byte
    assert json.loads((second.archived / "mqs.json").read_text()) == first_mqs
    assert (second.archived / "report.html").is_file()
    assert len(read_evidence(output / "evidence.jsonl").records) == len(
        read_evidence(second.archived / "evidence.jsonl").records
    )
    rows = (output / "models.csv").read_text().splitlines()
    assert len(rows) == 2 and "evidence.jsonl" in rows[1] and "runs/" not in rows[1]  # this run only
    assert not (tmp_path / "models.csv").exists()  # nothing written outside the folder

    before = (output / "evidence.jsonl").read_bytes()
    resumed = _certify(playbook, output, resume=True)
    assert resumed.archived is None and (output / "evidence.jsonl").read_bytes() == before
    assert json.loads((output / "mqs.json").read_text())["score"] == resumed.mqs.score
