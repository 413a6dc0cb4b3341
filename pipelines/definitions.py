"""The Dagster code location of apr: one Definitions with the certification asset graph."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pipelines.assets.artifacts import FORMATS, build_artifact
from pipelines.assets.certification import build_certification, build_certification_table
from pipelines.assets.checkpoints import build_checkpoint
from pipelines.assets.functional import build_functional_assets
from pipelines.assets.gates import build_gate_results
from pipelines.assets.inference import build_inference_traces
from pipelines.assets.selftest import build_self_test
from pipelines.partitions import DEFAULT_PLAYBOOKS_DIR, model_partitions
from pipelines.resources import AprSettings, WorkRoot, WorkRootIOManager


def build_assets(partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """Every asset of the graph over the given model partitions, upstream first."""
    return [
        build_checkpoint(partitions),
        *(build_artifact(fmt, partitions) for fmt in FORMATS),
        build_inference_traces(partitions),
        build_gate_results(partitions),
        build_self_test(partitions),  # full tier: planted defects gated once, after the gates (issue #24)
        build_certification(partitions),
        build_certification_table(partitions),
        *build_functional_assets(partitions),  # full tier: apr eval per format (issue #17)
    ]


def build_resources(work: WorkRoot, settings: AprSettings) -> dict[str, object]:
    """The resources the assets use: the work root, its IO manager and the apr settings."""
    return {"work": work, "settings": settings, "io_manager": WorkRootIOManager(work=work)}


def build_definitions(playbooks_dir: Path = DEFAULT_PLAYBOOKS_DIR, work: WorkRoot | None = None) -> dg.Definitions:
    """The code location for a playbooks directory (tests point it at fixture playbooks)."""
    settings = AprSettings(playbooks_dir=str(playbooks_dir))
    return dg.Definitions(
        assets=build_assets(model_partitions(playbooks_dir)),
        resources=build_resources(work or WorkRoot(), settings),
    )


defs = build_definitions()
