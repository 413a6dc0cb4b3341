"""The on-disk model cache under $APR_HOME: entries with manifests, per-ref locks, same-disk temp dirs."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from apr.errors import HubError
from apr.hub.sniff import ModelFormat
from apr.settings import current

HOME_ENV = "APR_HOME"
MANIFEST_NAME = "manifest.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class CachedModel:
    """A model the cache knows: where it is, what it is, and the sha256 it was verified against."""

    ref: str
    path: Path
    format: ModelFormat
    size_bytes: int
    sha256: str
    source: str = ""
    pulled_at: str = ""

    def to_json(self) -> dict[str, object]:
        record = asdict(self)
        record["path"] = str(self.path)
        return record


def default_home() -> Path:
    return current().home


def slug_for(ref: str) -> str:
    """A readable directory name for a ref, made unique by a short hash of the exact ref."""
    readable = _UNSAFE.sub("-", ref.replace("hf://", "hf-").strip("/"))[-60:].strip("-.") or "model"
    return f"{readable}-{hashlib.sha256(ref.encode('utf-8')).hexdigest()[:8]}"


def disk_error(err: OSError, where: Path) -> HubError:
    """Translate an OSError met while writing under the cache into one actionable line."""
    if err.errno == errno.ENOSPC:
        return HubError(
            f"no space left on device while writing {where}; free some space or point ${HOME_ENV} at a larger disk"
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HubError(f"cannot write {where} ({err.strerror}); make it writable or set ${HOME_ENV} elsewhere")
    return HubError(f"cannot write {where} ({err.strerror or err}); check the disk and ${HOME_ENV}")


class ModelCache:
    """Layout: ``models/<slug>/{manifest.json, <file or dir>}``, ``tmp/<slug>.*``, ``locks/<slug>.lock``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def entry_dir(self, slug: str) -> Path:
        return self.models_dir / slug

    def _ensure(self, directory: Path) -> Path:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(err, directory) from err
        return directory

    def read(self, slug: str) -> CachedModel | None:
        """The entry's manifest, or None when absent or unreadable (the caller fetches again)."""
        return self._read_manifest(self.entry_dir(slug) / MANIFEST_NAME)

    def _read_manifest(self, manifest: Path) -> CachedModel | None:
        try:
            record = json.loads(manifest.read_text(encoding="utf-8"))
            stored = Path(record["path"])
            return CachedModel(
                ref=str(record["ref"]),
                path=stored if stored.is_absolute() else manifest.parent / stored,
                format=record["format"],
                size_bytes=int(record["size_bytes"]),
                sha256=str(record["sha256"]),
                source=str(record.get("source", "")),
                pulled_at=str(record.get("pulled_at", "")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, slug: str, model: CachedModel) -> None:
        """Write the manifest atomically; paths inside the entry are stored relative so $APR_HOME can move."""
        entry = self._ensure(self.entry_dir(slug))
        record = model.to_json()
        if model.path.is_relative_to(entry):
            record["path"] = model.path.relative_to(entry).as_posix()
        target = entry / MANIFEST_NAME
        staged = entry / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
        try:
            staged.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(staged, target)
        except OSError as err:
            staged.unlink(missing_ok=True)
            raise disk_error(err, target) from err

    def entries(self) -> list[CachedModel]:
        """Every entry with a readable manifest, sorted by ref."""
        if not self.models_dir.is_dir():
            return []
        found = (self._read_manifest(d / MANIFEST_NAME) for d in self.models_dir.iterdir() if d.is_dir())
        return sorted((m for m in found if m is not None), key=lambda m: m.ref)

    def install(self, slug: str, staged: Path, final_name: str) -> Path:
        """Move a verified file or directory from a temp dir into the entry with one atomic rename."""
        entry = self._ensure(self.entry_dir(slug))
        target = entry / final_name
        try:
            if target.is_dir() and not target.is_symlink():
                # os.replace cannot replace a non-empty directory: move the old one aside first.
                aside = Path(tempfile.mkdtemp(dir=self._ensure(self.root / "tmp"), prefix=f"{slug}.old."))
                os.replace(target, aside / "old")
                os.replace(staged, target)
                shutil.rmtree(aside)
            else:
                os.replace(staged, target)
        except OSError as err:
            raise disk_error(err, target) from err
        return target

    def drop(self, slug: str) -> None:
        """Forget an entry (manifest first, so a half-removed entry never looks valid), before a re-fetch."""
        entry = self.entry_dir(slug)
        if not entry.is_dir():
            return
        (entry / MANIFEST_NAME).unlink(missing_ok=True)
        for child in entry.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    @contextmanager
    def lock(self, slug: str) -> Iterator[bool]:
        """Hold an exclusive lock for one ref; yields whether another process held it first."""
        locks = self._ensure(self.root / "locks")
        with open(locks / f"{slug}.lock", "a+b") as handle:
            waited = False
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited = True
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield waited
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def clear_stale_temps(self, slug: str) -> None:
        """Remove temp dirs left by killed pulls of this ref (call while holding its lock)."""
        temps = self.root / "tmp"
        if temps.is_dir():
            for stale in temps.glob(f"{slug}.*"):
                # A killed pull's pip child may still be running and deleting its own files meanwhile.
                shutil.rmtree(stale, onerror=_unless_vanished)

    @contextmanager
    def temp_dir(self, slug: str) -> Iterator[Path]:
        """A fresh directory on the cache's filesystem (so the final move is a rename), always removed."""
        temps = self._ensure(self.root / "tmp")
        try:
            path = Path(tempfile.mkdtemp(dir=temps, prefix=f"{slug}."))
        except OSError as err:
            raise disk_error(err, temps) from err
        try:
            yield path
        finally:
            # Cleanup must not mask the error (or interrupt) that brought us here.
            shutil.rmtree(path, ignore_errors=True)


def _unless_vanished(function: object, path: str, exc_info: tuple) -> None:
    """shutil.rmtree's error hook: an entry already gone is what we wanted; anything else is raised."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
