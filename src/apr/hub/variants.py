"""Converted variants of cached models (`apr pull REF --format apr|safetensors`), keyed by the source's sha256."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from apr.hub.cache import CachedModel, ModelCache, disk_error
from apr.hub.digest import size_of
from apr.hub.progress import note, progress_wanted

VARIANTS_DIR = "converted"
VARIANT_MANIFEST = "variant.json"
FORMATS = ("gguf", "safetensors", "apr")


@dataclass(frozen=True)
class Variant:
    """A conversion of a cached model: where it is and what it was made from."""

    path: Path
    format: str
    source_sha256: str
    source_ref: str
    size_bytes: int
    reused: bool


def variants_root(cache: ModelCache) -> Path:
    return cache.root / VARIANTS_DIR


def variant_dir(cache: ModelCache, source_sha256: str, target: str) -> Path:
    """Same content, same target: the same directory, whichever ref or path the source came from."""
    return variants_root(cache) / f"{source_sha256[:24]}-{target}"


def _output_name(source: CachedModel, target: str) -> str:
    stem = source.path.name.split(".")[0] if source.path.is_file() else source.path.name
    return stem if target == "safetensors" else f"{stem}.{target}"


def _read_manifest(directory: Path) -> dict[str, object] | None:
    try:
        record = json.loads((directory / VARIANT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def converted(cache: ModelCache, source: CachedModel, target: str, *, progress: bool) -> Variant:
    """``source`` as ``target``: the cached conversion when its manifest and files check out, else a new one."""
    if target == source.format:
        return Variant(source.path, target, source.sha256, source.ref, source.size_bytes, reused=True)
    directory = variant_dir(cache, source.sha256, target)
    out = directory / _output_name(source, target)
    with cache.lock(f"variant-{directory.name}"):
        record = _read_manifest(directory)
        if record is not None and out.exists() and record.get("size_bytes") == size_of(out):
            return Variant(out, target, source.sha256, source.ref, size_of(out), reused=True)
        note(f"converting {source.ref} to {target} (once; cached by content under {directory})", progress=progress)
        if directory.exists():
            shutil.rmtree(directory)  # a half-written or stale variant: start over
        try:
            directory.mkdir(parents=True)
        except OSError as err:
            raise disk_error(err, directory) from err
        _convert(source.path, target, out, progress=progress)
        size = size_of(out)
        record = {
            "source_ref": source.ref,
            "source_sha256": source.sha256,
            "format": target,
            "path": out.name,
            "size_bytes": size,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        staged = directory / f".{VARIANT_MANIFEST}.{os.getpid()}.tmp"
        staged.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(staged, directory / VARIANT_MANIFEST)
    return Variant(out, target, source.sha256, source.ref, size, reused=False)


def _convert(src: Path, target: str, out: Path, *, progress: bool) -> None:
    from apr.formats.convert import convert
    from apr.formats.load import load_model
    from apr.formats.model import FormatName

    fmt = cast(FormatName, target)  # the CLI admits only gguf, safetensors and apr

    model = load_model(src)
    if not progress_wanted(progress):
        convert(model, fmt, out)
        return
    import sys

    from tqdm import tqdm

    # tqdm's bar shows the rate and the time left (ETA) from the tensors done so far.
    with tqdm(
        total=len(model.tensors),
        desc=f"convert → {target}",
        unit="tensor",
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    ) as bar:
        convert(model, fmt, out, progress=lambda _name, _nbytes: bar.update(1))


def variants_of(cache: ModelCache, source_sha256: str) -> list[Path]:
    root = variants_root(cache)
    return sorted(root.glob(f"{source_sha256[:24]}-*")) if root.is_dir() else []
