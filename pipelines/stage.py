"""Running one asset's stage idempotently and turning its record into Dagster output and metadata."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from pipelines.work_root import FileRef, StageRecord, WorkLayout, fingerprint


@dataclass(frozen=True)
class StageResult:
    """What a stage's build step returns: its files by name and the facts worth recording."""

    files: dict[str, FileRef]
    facts: dict[str, Any]


def run_stage(
    layout: WorkLayout,
    *,
    asset: str,
    partition: str | None,
    code_version: str,
    inputs: Mapping[str, Any],
    build: Callable[[Path], StageResult],
) -> StageRecord:
    """Reuse the stored record when the fingerprint matches and files are intact; else build.

    ``build`` receives the asset's own directory under the work root (created) and must write
    only there; the record is stored by the IO manager once the asset returns it.
    """
    wanted = fingerprint(asset, code_version, inputs)
    previous = layout.reusable(asset, partition, wanted)
    if previous is not None:
        return previous
    directory = layout.asset_dir(asset, partition)
    directory.mkdir(parents=True, exist_ok=True)
    result = build(directory)
    record = StageRecord(
        asset=asset,
        partition=partition or "",
        fingerprint=wanted,
        files=result.files,
        facts=result.facts,
    )
    return record.in_cache(layout.root) if layout.remote is not None else record


def file_metadata(ref: FileRef) -> dict[str, dg.MetadataValue]:
    """sha256, bytes and path of a file, as Dagster metadata."""
    return {
        "sha256": dg.MetadataValue.text(ref.sha256),
        "bytes": dg.MetadataValue.int(ref.bytes),
        "path": dg.MetadataValue.path(ref.path),
    }


def stage_output(record: StageRecord, main_file: str | None, extra: Mapping[str, Any] | None = None) -> dg.Output:
    """The Dagster Output for a record: data version, reuse flag, main file's sha256/bytes, extras."""
    metadata: dict[str, Any] = {
        "reused": dg.MetadataValue.bool(record.reused),
        "fingerprint": dg.MetadataValue.text(record.fingerprint),
        "files": dg.MetadataValue.int(len(record.files)),
    }
    if main_file is not None:
        metadata.update(file_metadata(record.files[main_file]))
    metadata.update(extra or {})
    with warnings.catch_warnings():
        # Output(data_version=...) is marked beta in Dagster 1.13; it is what lets the UI track data versions.
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.Output(record, data_version=dg.DataVersion(record.data_version), metadata=metadata)
