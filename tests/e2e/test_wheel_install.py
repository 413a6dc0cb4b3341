"""The wheel is complete: built from the tree, installed in a fresh venv, `apr` works from an empty directory.

The fresh venv gets apr only from the wheel. Its dependencies (torch and the rest, gigabytes) are not
downloaded again: a ``.pth`` line appends this interpreter's site-packages to the fresh venv's path. That adds
the folder alone: the ``.pth`` files inside it (among them the editable hook that points at ``src/``) are not
processed, so ``import apr`` can only find the installed wheel, and every file apr reads at run time must be
in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory, isolated_apr_home) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wheel-install")
    wheels = root / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert "warning" not in built.stderr.lower(), built.stderr[-3000:]
    (wheel,) = wheels.glob("apr-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (fresh_site / "zz_apr_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    empty = root / "elsewhere"
    empty.mkdir()
    # The session's APR_HOME: its kernel cache is keyed by the C sources' contents, which the installed package
    # must still carry (the key is computed from them), and the suite compiles the kernels only once.
    return {"venv": venv, "python": python, "apr": venv / "bin" / "apr", "cwd": empty, "home": isolated_apr_home}


def run(installed: dict[str, Path], *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "APR_HOME")}
    environ.update(
        APR_HOME=str(installed["home"]), HF_HUB_OFFLINE="1", PATH=f"{installed['venv'] / 'bin'}:/usr/bin:/bin"
    )
    return subprocess.run(
        [str(part) for part in argv], cwd=installed["cwd"], env=environ, capture_output=True, text=True, timeout=timeout
    )


def test_apr_imports_from_the_wheel_not_the_source_tree(installed):
    done = run(installed, installed["python"], "-c", "import apr; print(apr.__file__)")
    assert done.returncode == 0, done.stderr
    location = Path(done.stdout.strip())
    assert location.is_relative_to(installed["venv"]) and not location.is_relative_to(REPO)


def test_version_run_and_qa_from_an_empty_directory(installed, fixture_models):
    version = run(installed, installed["apr"], "--version")
    assert version.returncode == 0, version.stderr
    for key in ("apr ", "kernels:", "cpu:", "threads:", "torch:", "device:"):
        assert key in version.stdout, version.stdout
    # The native kernels are built (or found in the cache) from the C sources the wheel carries: a missing
    # file shows up here as the PyTorch fallback.
    assert "torch" not in version.stdout.split("kernels:")[1].splitlines()[0], version.stdout

    model = fixture_models["qwen2"]["gguf"]
    reply = run(installed, installed["apr"], "run", model, "--prompt", "hello", "--max-tokens", "4", "--json")
    assert reply.returncode == 0, reply.stderr
    assert json.loads(reply.stdout.splitlines()[-1])["completion_tokens"] >= 1

    # Random weights: the gates that judge what the model says (golden answers, stopping, perplexity, the
    # served JSON replies and embeddings) fail.
    skips = [
        *("--skip", "REFERENCE-PARITY", "--skip", "THROUGHPUT", "--skip", "GOLDEN-OUTPUT"),
        *("--skip", "STOP-BEHAVIOR", "--skip", "PERPLEXITY"),
        *("--skip", "FIM", "--skip", "TOOL-CALLS", "--skip", "JSON-MODE", "--skip", "EMBEDDINGS"),
    ]
    qa = run(installed, installed["apr"], "qa", model, "--json", "--quiet", "--work-dir", "qa-work", *skips)
    assert qa.returncode == 0, qa.stdout[-2000:] + qa.stderr[-2000:]
    gates = {row["gate"]: row["status"] for row in json.loads(qa.stdout)["gates"]}
    assert gates["CONTRACT-INVARIANTS"] == "passed" and gates["FORMAT-PARITY"] == "passed"
    assert not list(installed["cwd"].glob("certifications")), "apr qa wrote outside its work dir"


def test_the_package_reaches_the_playbook_templates_and_schema_through_links():
    # One copy in git: the package's names are links into playbooks/, and the wheel gets the files they name.
    package = REPO / "src" / "apr" / "qa"
    assert (package / "templates").is_symlink() and (package / "playbook.schema.json").is_symlink()
    assert (package / "templates").resolve() == (REPO / "playbooks" / "templates").resolve()
    assert (package / "playbook.schema.json").resolve() == (REPO / "playbooks" / "playbook.schema.json").resolve()
