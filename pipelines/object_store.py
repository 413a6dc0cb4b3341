"""A work root on an object store (``s3://bucket/prefix``, or any URI fsspec resolves), mirrored by a local cache.

The stages hand files to subprocesses and memory-map models, so they always work on local files: under a
per-worker cache folder that stands for the root. This layer makes the store the place every worker reads:

- a stage's files are uploaded when its record is written, each to a temporary key first and then moved to its
  final key (never a half-written object under a final name), and the record (``manifest.json``) last: a
  manifest in the store means every file it names is there;
- a worker that needs a stage's record reads the manifest from the store and downloads what its cache lacks,
  checking each file's sha256 before it is renamed into place;
- paths inside a stored record are relative to the root (``apr-work:/…``), so two workers may cache the root
  in different folders.

Credentials come from the environment (for S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role; ``AWS_ENDPOINT_URL`` for an S3-compatible server), as the store's fsspec driver reads them; a
URI that carries them (``s3://key:secret@bucket``) is refused, so they never reach a record, a log or evidence.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from apr.errors import AprError

ROOT_TOKEN = "apr-work:"  # stands for the cache folder in stored records: the same record serves every worker
_CHUNK = 1 << 20


def is_object_store(location: str) -> bool:
    """True for a URI of a scheme other than ``file`` (one-letter schemes are Windows drives, not URIs)."""
    scheme = urlsplit(location).scheme
    return len(scheme) > 1 and scheme != "file"


def default_cache_dir(uri: str) -> Path:
    """Where a worker caches a remote root unless told: ``$APR_HOME/work-cache/<digest of the URI>``."""
    from apr.settings import current

    digest = hashlib.sha256(uri.rstrip("/").encode("utf-8")).hexdigest()[:16]
    return current().home / "work-cache" / digest


class RemoteRoot:
    """The object-store side of a work root: upload, download and read records, by path under the local cache."""

    def __init__(self, uri: str, cache: Path) -> None:
        parts = urlsplit(uri)
        if "@" in parts.netloc:
            raise AprError(
                f"{parts.scheme}://…@{parts.netloc.rsplit('@', 1)[1]}: a work root URI must not carry credentials; "
                "give them in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)"
            )
        try:
            from fsspec.core import url_to_fs

            self.fs, base = url_to_fs(uri)
        except ImportError as err:  # the store's driver (s3fs, gcsfs...) is not installed
            raise AprError(
                f"{uri}: no fsspec driver for {parts.scheme}:// ({err.msg}); for s3:// pip install -e '.[objectstore]'"
            ) from None
        except ValueError as err:  # an unknown protocol
            raise AprError(f"{uri}: not a work root fsspec can open ({err})") from None
        self.uri = uri
        self.base = base.rstrip("/")
        self.cache = cache

    def key(self, local: Path) -> str:
        """The store key of a file under the cache folder."""
        return f"{self.base}/{local.relative_to(self.cache).as_posix()}"

    def holds(self, local: Path) -> bool:
        """True when ``local`` is under the cache folder (files elsewhere, like the checkpoint, are not mirrored)."""
        return local.is_relative_to(self.cache)

    def size(self, local: Path) -> int | None:
        """The size of the stored object of a cached file, or None when there is none (read fresh, not listed)."""
        key = self.key(local)
        self.fs.invalidate_cache(key)
        try:
            return int(self.fs.info(key)["size"])
        except FileNotFoundError:
            return None

    def upload(self, local: Path) -> None:
        """Copy a cached file to its key through a temporary key, so the final name only ever holds whole files."""
        self._put(local, self.key(local))

    def upload_text(self, local: Path, text: str) -> None:
        """Write ``text`` to the key of ``local`` (through a temporary key), without touching the local file."""
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".json", delete=False) as handle:
            handle.write(text)
        staged = Path(handle.name)
        try:
            self._put(staged, self.key(local))
        finally:
            staged.unlink(missing_ok=True)

    def _put(self, source: Path, key: str) -> None:
        parent, name = key.rsplit("/", 1)
        temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.part"
        try:
            self.fs.put_file(str(source), temporary)
            self.fs.mv(temporary, key)
        except BaseException:
            self._remove_quietly(temporary)
            raise

    def read_text(self, local: Path) -> str | None:
        """The stored text of a cached path's key, or None when the store has no such object."""
        try:
            return bytes(self.fs.cat_file(self.key(local))).decode("utf-8")
        except FileNotFoundError:
            return None

    def download(self, local: Path, sha256: str, mtime_ns: int) -> bool:
        """Fetch a file into the cache, verified against ``sha256`` before it is renamed into place, with the recorded
        mtime (so later checks need not re-hash it); False when the store has no such object."""
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
        os.close(fd)
        staged = Path(name)
        try:
            try:
                self.fs.get_file(self.key(local), str(staged))
            except FileNotFoundError:
                return False
            digest = hashlib.sha256()
            with staged.open("rb") as handle:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                raise AprError(
                    f"{self.uri}: {self.key(local)} does not match the sha256 its manifest records; "
                    "the store was changed behind the pipelines: remove that stage's folder there and rerun"
                )
            os.chmod(staged, 0o644)
            os.utime(staged, ns=(mtime_ns, mtime_ns))
            os.replace(staged, local)
            return True
        finally:
            staged.unlink(missing_ok=True)

    def _remove_quietly(self, key: str) -> None:
        # Only on the way out of a failed upload: a leftover temporary key is hidden and harmless, so a failure to
        # remove it must not replace the error that matters.
        try:
            self.fs.rm_file(key)
        except OSError as err:
            print(f"apr: could not remove the temporary object {key} ({type(err).__name__})", file=sys.stderr)

    # Records name files by absolute paths under the cache; stored, those paths are relative to the root.
    def to_stored(self, document: Any) -> Any:
        return rewrite(document, str(self.cache), ROOT_TOKEN)

    def from_stored(self, document: Any) -> Any:
        return rewrite(document, ROOT_TOKEN, str(self.cache))


def rewrite(value: Any, prefix: str, replacement: str) -> Any:
    """Every string of a JSON document that is ``prefix`` or starts with ``prefix/``, re-rooted at ``replacement``."""
    if isinstance(value, str):
        if value == prefix or value.startswith(prefix.rstrip("/") + "/"):
            return replacement + value[len(prefix) :]
        return value
    if isinstance(value, dict):
        return {name: rewrite(item, prefix, replacement) for name, item in value.items()}
    if isinstance(value, list):
        return [rewrite(item, prefix, replacement) for item in value]
    return value
