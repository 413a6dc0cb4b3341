"""Dagster resources: the work root, its IO manager (stage manifests) and the apr settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from apr.settings import current
from pipelines.object_store import default_cache_dir, is_object_store
from pipelines.partitions import DEFAULT_PLAYBOOKS_DIR, REPO_ROOT
from pipelines.work_root import StageRecord, WorkLayout, work_root_path

DEFAULT_WORK_ROOT = REPO_ROOT / ".apr-work"
DEFAULT_CERTIFICATIONS_DIR = REPO_ROOT / "certifications"


def default_work_root() -> str:
    """``$APR_WORK`` when set, else ``.apr-work/`` in the repository."""
    return str(current().work_root or DEFAULT_WORK_ROOT)


class WorkRoot(dg.ConfigurableResource):
    """The one root under which the pipelines write (plus the published certifications folder)."""

    # A path or a file:// URI (on a cluster, a shared mount every worker sees at the same place), or an object-store
    # URI fsspec resolves (s3://bucket/prefix), cached per worker in `cache_dir` (docs/scale.md).
    root: str = default_work_root()
    certifications_dir: str = str(DEFAULT_CERTIFICATIONS_DIR)
    # This worker's cache of an object-store root (default $APR_HOME/work-cache/<digest of the URI>).
    cache_dir: str | None = None

    def layout(self) -> WorkLayout:
        if is_object_store(self.root):
            cache = Path(self.cache_dir) if self.cache_dir else default_cache_dir(self.root)
            return WorkLayout(cache, remote_uri=self.root)
        return WorkLayout(work_root_path(self.root))

    def certifications(self) -> Path:
        return work_root_path(self.certifications_dir).resolve()


class AprSettings(dg.ConfigurableResource):
    """How the pipelines call apr: where the playbooks are and how the QA matrix runs."""

    playbooks_dir: str = str(DEFAULT_PLAYBOOKS_DIR)
    workers: int = 1
    # dtype of the SafeTensors artifact (f32, bf16, f16); None = what `apr certify` uses (apr.qa.artifacts).
    safetensors_dtype: str | None = None
    cell_timeout_s: float = 600.0

    def playbooks(self) -> Path:
        return Path(self.playbooks_dir).resolve()


class WorkRootIOManager(dg.ConfigurableIOManager):
    """Stores each asset's StageRecord as ``<root>/<partition>/<asset>/manifest.json``.

    An unpartitioned asset that reads a partitioned one gets ``{partition: record}`` for every
    partition that has been materialized.
    """

    work: WorkRoot

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if not isinstance(obj, StageRecord):
            raise TypeError(f"{context.asset_key.to_user_string()}: assets must return a StageRecord")
        expected = context.asset_partition_key if context.has_asset_partitions else ""
        if obj.partition != expected:
            raise ValueError(f"record for partition {obj.partition!r} written as {expected!r}")
        self.work.layout().write_record(obj)

    def load_input(self, context: dg.InputContext) -> StageRecord | dict[str, StageRecord]:
        layout = self.work.layout()
        asset = context.asset_key.path[-1]
        if context.has_asset_partitions and not context.has_partition_key:
            # An unpartitioned asset reading a partitioned one: every materialized partition.
            records = {key: layout.read_record(asset, key) for key in context.asset_partition_keys}
            return {key: record for key, record in records.items() if record is not None and layout.fetch(record)}
        partition = context.asset_partition_key if context.has_asset_partitions else None
        record = layout.read_record(asset, partition)
        where = f" partition {partition!r}" if partition else ""
        if record is None:
            root = self.work.root if layout.remote is not None else layout.root
            raise dg.Failure(f"{asset}{where} has not been materialized under {root}; materialize it first")
        if not layout.fetch(record):  # an object-store root: the files into this worker's cache
            raise dg.Failure(f"{asset}{where}: a file its manifest names is missing from {self.work.root}; rerun it")
        return record
