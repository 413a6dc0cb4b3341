"""Every command-line usage error, across verbs, is one `error:` line naming the option and what it accepts."""

from __future__ import annotations

import subprocess
import sys

import pytest

APR = [sys.executable, "-m", "apr.cli.main"]

# (argv, fragments the one error line must hold: the option and the accepted values)
CASES = [
    (["convert", "m.gguf", "--to", "bogus", "-o", "x"], ["--to", "'bogus'", "gguf, safetensors, apr"]),
    (["convert", "m.gguf", "--to"], ["--to", "needs a value", "gguf, safetensors, apr"]),
    (["convert", "m.gguf", "--to", "apr", "-o", "x", "--dtype", "f8"], ["--dtype", "keep, f32, bf16, f16"]),
    (["run"], ["missing argument MODEL"]),
    (["run", "m"], ["missing option --prompt"]),
    (["run", "m", "-p", "x", "--max-tokens", "abc"], ["--max-tokens", "'abc'", "an integer >= 1"]),
    (["run", "m", "-p", "x", "--device", "tpu"], ["--device", "one of auto, cpu, cuda"]),
    (["run", "m", "-p", "x", "--dtype", "int3"], ["--dtype", "one of auto, bf16, fp16, fp32"]),
    (["run", "m", "-p", "x", "--trace", "everything"], ["--trace", "one of attention, hidden, all"]),
    (["run", "m", "-p", "x", "--batch-size", "0"], ["--batch-size", "from 1 to 256"]),
    (["run", "m", "-p", "x", "--temperature", "-1"], ["--temperature", ">= 0.0"]),
    (["run", "m", "extra", "-p", "x"], ["unexpected extra argument", "extra"]),
    (["run", "m", "-p", "x", "--json=1"], ["--json", "does not take a value"]),
    (["run", "m", "-p"], ["-p needs a value"]),
    (["run", "m", "-p", "x", "--kv-cache", "f8"], ["--kv-cache", "'f8'", "one of f32, f16"]),
    (["chat", "m", "--device", "gpu"], ["--device", "one of auto, cpu, cuda"]),
    (["serve", "m", "--kv-cache", "bf16"], ["--kv-cache", "one of f32, f16"]),
    (["bench", "m", "--batch", "0"], ["--batch", "from 1 to 64"]),
    (["serve", "m", "--device", "tpu"], ["--device", "one of auto, cpu, cuda"]),
    (["serve", "m", "--port", "70000"], ["--port", "from 0 to 65535"]),
    (["pull", "m", "--format", "onnx"], ["--format", "one of gguf, safetensors, apr"]),
    (["list", "--bogus"], ["no such option --bogus", "--size"]),
    (["prune", "--older-than", "-1"], ["--older-than", ">= 0.0"]),
    (["rm"], ["missing argument REF"]),
    (["inspect", "m", "--nope"], ["no such option --nope"]),
    (["qa", "m", "--max-tokens", "1"], ["--max-tokens", ">= 2"]),
    (["certify", "p.yaml", "--workers", "0"], ["--workers", "from 1 to 64"]),
    (["report", "--nope"], ["no such option --nope"]),
    (["nosuchverb"], ["no such command 'nosuchverb'", "run"]),
]


@pytest.mark.parametrize(("argv", "fragments"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_error_is_one_line(argv: list[str], fragments: list[str]) -> None:
    done = subprocess.run([*APR, *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    for leak in ("Value error", "Input should be", "╭", "Traceback", "Usage:"):
        assert leak not in done.stderr
    assert done.stdout == ""


def test_a_bad_ref_is_refused_before_torch_is_imported() -> None:
    """`apr run nosuch:model` answers from the ref alone: torch (seconds to import) is never loaded."""
    probe = (
        "import sys; from apr.cli.main import main; code = main(['run', 'nosuch:model', '-p', 'hi']); "
        "print(code, 'torch' in sys.modules, 'apr.engine' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
    assert done.stderr.startswith("error: unknown model ref 'nosuch:model'") and len(done.stderr.splitlines()) == 1


def test_help_does_not_import_torch() -> None:
    probe = (
        "import sys; from apr.cli.main import main; code = main(['run', '-h']); "
        "print(code, 'torch' in sys.modules, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stderr.split() == ["0", "False"], done.stderr
    assert "--trace" in done.stdout and "--batch-size" in done.stdout
