"""The hostile-input corpus: one crafted bad file or argument per class, each through the real `apr` CLI.

Every case must end with exactly one `error:` line on stderr, exit code 2, no traceback, within a bounded
wall time and resident memory, and leave nothing behind in its folder. The cases run a few at a time
(each is a separate process), so the whole corpus takes about as long as its slowest few cases.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hostile_inputs as hostile
import pytest

# Generous bounds for a loaded 2-core machine: a hang or a runaway allocation exceeds them by far.
WALL_LIMIT_S = 90.0
RSS_LIMIT_MB = 2048
PARALLEL = 3


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    expect: str  # a phrase the error line must hold
    forbidden: tuple[str, ...] = ()  # text that must not show (another file's content)


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str
    wall_s: float
    max_rss_mb: float
    files_before: frozenset[str]
    files_after: frozenset[str]


def _files(folder: Path) -> frozenset[str]:
    return frozenset(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _run(case: Case, folder: Path) -> Outcome:
    """Run `apr ARGV` in `folder`; wall time and peak RSS of that process alone (wait4)."""
    before = _files(folder)
    err_path = folder.parent / f"{case.name}.stderr"
    with open(err_path, "w") as err, open(os.devnull, "w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "apr.cli.main", *case.argv],
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            proc.returncode = -1  # reaped by wait4 above; keep Popen from waiting again
        wall = time.monotonic() - start
    return Outcome(
        returncode=os.waitstatus_to_exitcode(status),
        stderr=err_path.read_text(),
        wall_s=wall,
        max_rss_mb=usage.ru_maxrss / 1024,
        files_before=before,
        files_after=_files(folder),
    )


def _build_cases(root: Path, models: dict[str, dict[str, Path]]) -> list[tuple[Case, Path]]:
    gguf = models["llama"]["gguf"]
    safetensors = models["llama"]["safetensors"]
    playbook = (
        Path(__file__).resolve().parents[2] / "playbooks" / "models" / "smollm2-135m-mvp.playbook.yaml"
    ).read_text()
    cases: list[tuple[Case, Path]] = []

    def folder(name: str) -> Path:
        path = root / name
        path.mkdir()
        return path

    here = folder("fifo")
    os.mkfifo(here / "model.gguf")
    cases.append((Case("fifo", ("inspect", "model.gguf"), "FIFO"), here))
    cases.append((Case("device", ("qa", "/dev/zero"), "device"), folder("device")))

    here = folder("gguf-nested")
    hostile.gguf_nested_arrays(here / "nested.gguf", depth=200_000)
    cases.append((Case("gguf-nested-arrays", ("inspect", "nested.gguf"), "nested"), here))
    here = folder("gguf-layers")
    hostile.gguf_with_u32(gguf, here / "layers.gguf", "llama.block_count", 4_000_000_000)
    cases.append((Case("gguf-absurd-block-count", ("inspect", "layers.gguf"), "block_count"), here))
    here = folder("gguf-tensors")
    hostile.gguf_with_tensor_count(gguf, here / "tensors.gguf", 999_999)
    cases.append((Case("gguf-tensor-count", ("inspect", "tensors.gguf"), "cannot fit"), here))
    here = folder("gguf-truncated")
    hostile.truncated(gguf, here / "half.gguf")
    cases.append((Case("gguf-truncated", ("inspect", "half.gguf"), "truncated"), here))

    here = folder("st-shape")
    header = {"model.norm.weight": {"dtype": "F32", "shape": "64", "data_offsets": [0, 256]}}
    hostile.safetensors_dir_with_header(safetensors, here / "model", header, bytes(256))
    cases.append((Case("safetensors-shape-string", ("inspect", "model"), "shape"), here))
    here = folder("st-overlap")
    header = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    hostile.safetensors_dir_with_header(safetensors, here / "model", header, bytes(24))
    cases.append((Case("safetensors-overlap", ("inspect", "model"), "share bytes"), here))

    here = folder("nan")
    hostile.safetensors_dir_with_nan(safetensors, here / "model", "model.norm.weight")
    cases.append((Case("nan-weights", ("run", "model", "--prompt", "hi", "--max-tokens", "4"), "NaN"), here))

    here = folder("template-broken")
    hostile.gguf_with_string(gguf, here / "t.gguf", "tokenizer.chat_template", "{% for message in %}")
    cases.append(
        (Case("template-broken", ("run", "t.gguf", "--prompt", "hi", "--max-tokens", "2"), "chat template"), here)
    )
    here = folder("template-huge")
    hostile.gguf_with_string(gguf, here / "t.gguf", "tokenizer.chat_template", "{{ 'lol' * 10000000000 }}")
    cases.append(
        (Case("template-huge-string", ("run", "t.gguf", "--prompt", "hi", "--max-tokens", "2"), "repeats"), here)
    )

    here = folder("yaml-laughs")
    (here / "p.yaml").write_text(hostile.BILLION_LAUGHS)
    cases.append((Case("yaml-billion-laughs", ("certify", "p.yaml"), "aliases"), here))
    here = folder("yaml-inf")
    (here / "p.yaml").write_text(playbook.replace("apr_playbook: 1", "apr_playbook: 1\nexecution:\n  timeout_s: .inf"))
    cases.append((Case("yaml-infinite-timeout", ("certify", "p.yaml"), "finite"), here))
    here = folder("yaml-extends")
    (here / "p.yaml").write_text("extends: /etc/passwd\n")
    cases.append((Case("yaml-extends-system-file", ("certify", "p.yaml"), "extends", forbidden=("root:",)), here))
    here = folder("yaml-big")
    (here / "p.yaml").write_text("a: [" + "1, " * 1_000_000 + "1]\n")
    cases.append((Case("yaml-too-large", ("certify", "p.yaml"), "too large"), here))
    here = folder("yaml-deep")
    (here / "p.yaml").write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    cases.append((Case("yaml-deep-nesting", ("certify", "p.yaml"), "nests deeper"), here))

    here = folder("unwritable")
    shutil.copy(gguf, here / "m.gguf")
    # /proc takes no new files, even from root: the write fails however the tests are run.
    cases.append(
        (
            Case(
                "output-unwritable",
                ("convert", "m.gguf", "--to", "apr", "-o", "/proc/apr-out/m.apr"),
                "cannot write /proc/apr-out/m.apr",
            ),
            here,
        )
    )
    return cases


@pytest.fixture(scope="module")
def corpus(fixture_models, tmp_path_factory) -> dict[str, tuple[Case, Outcome]]:
    cases = _build_cases(tmp_path_factory.mktemp("hostile"), fixture_models)
    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = list(pool.map(lambda item: _run(*item), cases))
    return {case.name: (case, outcome) for (case, _), outcome in zip(cases, outcomes)}


CASE_NAMES = [
    "fifo",
    "device",
    "gguf-nested-arrays",
    "gguf-absurd-block-count",
    "gguf-tensor-count",
    "gguf-truncated",
    "safetensors-shape-string",
    "safetensors-overlap",
    "nan-weights",
    "template-broken",
    "template-huge-string",
    "yaml-billion-laughs",
    "yaml-infinite-timeout",
    "yaml-extends-system-file",
    "yaml-too-large",
    "yaml-deep-nesting",
    "output-unwritable",
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_ends_with_one_line_bounded_and_clean(corpus, name):
    case, outcome = corpus[name]
    lines = outcome.stderr.splitlines()
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr[-3000:]
    assert "Traceback" not in outcome.stderr
    assert case.expect in lines[0], lines[0]
    for text in case.forbidden:
        assert text not in outcome.stderr
    assert outcome.wall_s < WALL_LIMIT_S, f"{name} took {outcome.wall_s:.1f} s"
    assert outcome.max_rss_mb < RSS_LIMIT_MB, f"{name} peaked at {outcome.max_rss_mb:.0f} MB"
    assert outcome.files_after == outcome.files_before, "files were left behind"


def test_the_corpus_has_every_case(corpus):
    assert sorted(corpus) == sorted(CASE_NAMES)
