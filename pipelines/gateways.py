"""Blocking gateway checks the assets emit: a model that does not load stops everything below it."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import dagster as dg

from apr.errors import AprError


def load_check(
    asset: str, check: str, path: Path, *, expected_tensors: Collection[str] | None = None
) -> dg.AssetCheckResult:
    """Open the model with apr's strict loaders; fail the check on a load error or a tensor-set mismatch."""
    from apr.formats import load_model

    try:
        model = load_model(path)
    except AprError as err:
        return dg.AssetCheckResult(
            asset_key=asset,
            check_name=check,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"does not load: {err}",
            metadata={"path": dg.MetadataValue.path(str(path))},
        )
    names = set(model.tensors)
    metadata = {
        "path": dg.MetadataValue.path(str(path)),
        "architecture": dg.MetadataValue.text(str(model.config.architecture)),
        "tensors": dg.MetadataValue.int(len(names)),
    }
    if expected_tensors is not None and names != set(expected_tensors):
        missing = sorted(set(expected_tensors) - names)[:5]
        extra = sorted(names - set(expected_tensors))[:5]
        return dg.AssetCheckResult(
            asset_key=asset,
            check_name=check,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"tensor set differs from the checkpoint: missing {missing}, extra {extra}",
            metadata=metadata,
        )
    if not names:
        return dg.AssetCheckResult(
            asset_key=asset,
            check_name=check,
            passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description="loads but holds no tensors",
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        asset_key=asset, check_name=check, passed=True, description=f"loads: {len(names)} tensors", metadata=metadata
    )


def tensor_names(path: Path) -> list[str]:
    """The canonical (Hugging Face) tensor names of a model file, sorted."""
    from apr.formats import load_model

    return sorted(load_model(path).tensors)
