"""The work-root layout and its manifest: where every pipeline file lives and what produced it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, PrivateAttr

from apr.errors import AprError

if TYPE_CHECKING:
    from pipelines.object_store import RemoteRoot

MANIFEST_NAME = "manifest.json"
UNPARTITIONED = "_all"
_HASH_CHUNK = 1 << 20
FILE_MODE = 0o644
DIR_MODE = 0o755


class FileRef(BaseModel):
    """One file a stage produced or used: where it is, its sha256 and size (and mtime for cheap re-checks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    sha256: str
    bytes: int
    mtime_ns: int

    def still_matches(self) -> bool:
        """True when the file is still there unchanged (size + mtime, re-hashed only if mtime moved)."""
        path = Path(self.path)
        if not path.is_file():
            return False
        stat = path.stat()
        if stat.st_size != self.bytes:
            return False
        if stat.st_mtime_ns == self.mtime_ns:
            return True
        return sha256_file(path) == self.sha256


class StageRecord(BaseModel):
    """What one asset materialization produced; stored as the asset's manifest in the work root.

    ``fingerprint`` hashes everything the stage's output depends on (its code version, the
    fingerprints of its inputs and the settings it used): equal fingerprint + intact files means
    the work can be skipped.
    """

    model_config = ConfigDict(extra="forbid")

    asset: str
    partition: str
    fingerprint: str
    files: dict[str, FileRef]
    facts: dict[str, Any]
    reused: bool = False
    # The local folder standing for an object-store root (a worker's cache), if the record lives in one: paths in
    # the facts under it do not count in the data version, so every worker computes the same one.
    _cache_root: str | None = PrivateAttr(default=None)

    @property
    def data_version(self) -> str:
        """A digest of the produced files (and facts), independent of how they were produced."""
        facts = self.facts
        if self._cache_root is not None:
            from pipelines.object_store import ROOT_TOKEN, rewrite

            facts = rewrite(facts, self._cache_root, ROOT_TOKEN)
        payload = {
            "files": {name: ref.sha256 for name, ref in sorted(self.files.items())},
            "facts": facts,
        }
        return sha256_json(payload)

    def in_cache(self, root: Path) -> StageRecord:
        """This record, marked as living in an object-store root cached at ``root`` (see ``data_version``)."""
        self._cache_root = str(root)
        return self

    def path(self, name: str) -> Path:
        """The absolute path of a named file of this stage."""
        return Path(self.files[name].path)

    def intact(self) -> bool:
        """True when every recorded file still exists unchanged."""
        return all(ref.still_matches() for ref in self.files.values())


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """The hex sha256 of a value's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_ref(path: Path, sha256: str | None = None) -> FileRef:
    """Describe a file; pass ``sha256`` when it is already known (e.g. verified by the hub)."""
    path = path.resolve()
    stat = path.stat()
    return FileRef(
        path=str(path),
        sha256=sha256 or sha256_file(path),
        bytes=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
    )


def fingerprint(asset: str, code_version: str, inputs: Mapping[str, Any]) -> str:
    """The fingerprint of a stage run: asset name, code version and every input that matters."""
    return sha256_json({"asset": asset, "code_version": code_version, "inputs": dict(inputs)})


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file via a temp file in the same directory and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp_name, FILE_MODE)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def work_root_path(location: str) -> Path:
    """The local path of a work root given as a path or a ``file://`` URI (a shared mount on a cluster).

    The stages hand their files to subprocesses (`apr run`, papermill) and memory-map models, so every
    worker must see the root as a POSIX path at the same place: an NFS/EFS/Lustre mount, or an object
    store mounted as a file system. Other URI schemes are refused rather than half supported.
    """
    parts = urlsplit(location)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise AprError(f"{location}: a file:// work root names a local path (file:///shared/apr-work), not a host")
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # one letter would be a Windows drive, not a scheme
        raise AprError(
            f"{location}: this folder must be a path or a file:// URI on a file system every worker mounts at the "
            f"same place (mount {parts.scheme}:// storage with its FUSE driver and give that path); only the work "
            "root itself may be an object-store URI (docs/scale.md)"
        )
    return Path(location)


class WorkLayout:
    """Every path of the pipelines under one root: ``<root>/<partition>/<asset>/...``.

    Unpartitioned assets live under ``<root>/_all/<asset>/``. Each asset directory holds the
    stage's files and its ``manifest.json`` (a StageRecord).
    """

    def __init__(self, root: Path, remote_uri: str | None = None) -> None:
        self.root = root.resolve()
        # With an object-store root, ``root`` is this worker's cache of it and records live in the store.
        self.remote: RemoteRoot | None = None
        if remote_uri is not None:
            from pipelines.object_store import RemoteRoot

            self.remote = RemoteRoot(remote_uri, self.root)

    def asset_dir(self, asset: str, partition: str | None) -> Path:
        """The directory owned by one asset (and partition)."""
        return self.root / (partition or UNPARTITIONED) / asset

    def manifest_path(self, asset: str, partition: str | None) -> Path:
        return self.asset_dir(asset, partition) / MANIFEST_NAME

    def ensure_root(self) -> None:
        """Create the root, with a .gitignore so a root inside the repo is never committed."""
        self.root.mkdir(parents=True, exist_ok=True)
        ignore = self.root / ".gitignore"
        if not ignore.exists():
            write_text_atomic(ignore, "# Written by the apr pipelines: everything here is rebuildable.\n*\n")

    def read_record(self, asset: str, partition: str | None) -> StageRecord | None:
        """The stored record of an asset partition, or None when it was never materialized.

        With an object-store root the record is the store's (the one every worker sees); its files may still have
        to be fetched into this worker's cache (``fetch``)."""
        path = self.manifest_path(asset, partition)
        if self.remote is not None:
            text = self.remote.read_text(path)
            if text is None:
                return None
            return StageRecord.model_validate(self.remote.from_stored(json.loads(text))).in_cache(self.root)
        if not path.is_file():
            return None
        return StageRecord.model_validate_json(path.read_text(encoding="utf-8"))

    def write_record(self, record: StageRecord) -> Path:
        """Store a record atomically as the asset partition's manifest (in an object-store root: its files first,
        each whole, then the manifest, so a manifest there always names files that are there)."""
        self.ensure_root()
        path = self.manifest_path(record.asset, record.partition or None)
        if self.remote is not None:
            previous = self.read_record(record.asset, record.partition or None)
            kept = previous.files if previous is not None else {}
            for name, ref in record.files.items():
                local = Path(ref.path)
                if not self.remote.holds(local):
                    continue  # the checkpoint in $APR_HOME, a published folder: not part of the root
                unchanged = name in kept and kept[name].sha256 == ref.sha256
                if not (unchanged and self.remote.size(local) == ref.bytes):
                    self.remote.upload(local)
            document = self.remote.to_stored(record.model_dump(mode="json"))
            self.remote.upload_text(path, json.dumps(document, indent=2) + "\n")
        write_text_atomic(path, record.model_dump_json(indent=2) + "\n")
        return path

    def fetch(self, record: StageRecord) -> bool:
        """Make a record's files present in this worker's cache (downloaded from the object store where missing or
        changed); False when the store lacks one. A no-op for a local root."""
        if self.remote is None:
            return True
        for ref in record.files.values():
            local = Path(ref.path)
            if self.remote.holds(local) and not ref.still_matches():
                if not self.remote.download(local, ref.sha256, ref.mtime_ns):
                    return False
        return True

    def reusable(self, asset: str, partition: str | None, wanted_fingerprint: str) -> StageRecord | None:
        """The previous record when its fingerprint matches and its files are intact, else None."""
        previous = self.read_record(asset, partition)
        if previous is None or previous.fingerprint != wanted_fingerprint:
            return None
        if not self.fetch(previous) or not previous.intact():
            return None
        return previous.model_copy(update={"reused": True})

    @contextmanager
    def staging_dir(self, asset: str, partition: str | None, name: str) -> Iterator[Path]:
        """A fresh temp directory that replaces ``<asset_dir>/<name>`` only when the block succeeds."""
        final = self.asset_dir(asset, partition) / name
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
        os.chmod(staging, DIR_MODE)  # mkdtemp creates 0700
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_dir(staging, final)

    def discard_unfinished(self, partition: str | None) -> None:
        """Remove the staging folders that interrupted stages of a partition left (never visible as results)."""
        folder = self.root / (partition or UNPARTITIONED)
        if not folder.is_dir():
            return
        for asset_dir in folder.iterdir():
            if asset_dir.is_dir() and not asset_dir.name.startswith("."):
                names = {entry.name.split(".")[1] for entry in asset_dir.glob(".*.*") if entry.is_dir()}
                for name in names:
                    discard_unfinished(asset_dir, name)


def replace_dir(source: Path, final: Path) -> None:
    """Move ``source`` onto ``final``, removing the old directory only after the new one is in place."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(source, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_dir(final: Path) -> None:
    """Undo a ``replace_dir`` cut short between its two renames: the old folder goes back where it was when
    no new one took its place; the leftover ``.old`` copy is removed either way."""
    old = final.with_name(f".{final.name}.old")
    if old.is_dir() and not final.exists():
        os.replace(old, final)
    shutil.rmtree(old, ignore_errors=True)


def discard_unfinished(parent: Path, name: str) -> None:
    """Remove what an interrupted ``staging_dir``/``replace_dir`` of ``parent/name`` left: hidden staging folders
    (``.name.*``) never renamed into place, after putting back an old folder that lost its replacement."""
    if not parent.is_dir():
        return
    restore_dir(parent / name)
    for leftover in parent.glob(f".{name}.*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
