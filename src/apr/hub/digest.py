"""SHA-256 of model files and directories, streamed with a progress bar."""

from __future__ import annotations

import hashlib
from pathlib import Path

from apr.hub.progress import ByteProgress, byte_bar

CHUNK_BYTES = 8 * 1024 * 1024


def _feed(path: Path, hasher: hashlib._Hash, bar: ByteProgress) -> None:
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while True:
            count = handle.readinto(view)
            if not count:
                break
            hasher.update(view[:count])
            bar.update(count)


def model_files(path: Path) -> list[Path]:
    """The files that make up a model: the file itself, or every file under a directory, sorted."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in model_files(path))


def sha256_of(path: Path, *, progress: bool, label: str = "verify") -> str:
    """Hex sha256 of a file; for a directory, the sha256 of its 'sha256  relative/path' lines (sorted)."""
    files = model_files(path)
    with byte_bar(f"{label} {path.name}", sum(p.stat().st_size for p in files), progress=progress) as bar:
        if not path.is_dir():
            hasher = hashlib.sha256()
            _feed(path, hasher, bar)
            return hasher.hexdigest()
        lines = []
        for file in files:
            hasher = hashlib.sha256()
            _feed(file, hasher, bar)
            lines.append(f"{hasher.hexdigest()}  {file.relative_to(path).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
