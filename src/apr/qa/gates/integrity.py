"""G0 integrity: the file is the one expected (sha256) and every artifact parses strictly (header, CRCs, config)."""

from __future__ import annotations

from pathlib import Path

from apr.errors import AprError
from apr.formats.model import CanonicalModel
from apr.qa.axes import Format
from apr.qa.gates.catalog import GateId
from apr.qa.recording import Check, corroborated, falsified, skipped, verdict

G0 = GateId.G0_INTEGRITY


def sha256_check(path: Path, actual: str, expected: str | None, fmt: Format) -> Check:
    """The source file's digest against the one the hub recorded for this model."""
    if expected is None:
        return skipped(
            G0,
            "sha256",
            f"no expected sha256 known for {path.name} (not a catalogued model): "
            f"digest {actual[:16]}… recorded, not verified",
            format=fmt,
            metrics={"sha256": actual},
        )
    ok = actual == expected.lower()
    reason = (
        f"sha256 {actual[:16]}… matches the catalogue"
        if ok
        else f"sha256 {actual} differs from the expected {expected}: the file is not the published checkpoint"
    )
    return verdict(G0, "sha256", ok, reason, 1, format=fmt, metrics={"sha256": actual, "expected": expected})


def load_check(path: Path, fmt: Format) -> tuple[Check, CanonicalModel | None]:
    """Strict read of one artifact: magic, header, tensor index, CRCs and config-vs-tensor shapes."""
    from apr.formats import load_model

    try:
        model = load_model(path)
    except (AprError, ValueError, OSError) as err:
        return falsified(G0, f"parse:{fmt}", f"{fmt} artifact does not read strictly: {err}", format=fmt), None
    tensors = len(model.tensors)
    if tensors == 0:
        return falsified(G0, f"parse:{fmt}", f"{fmt} artifact parsed but holds no tensors", format=fmt), model
    return corroborated(
        G0,
        f"parse:{fmt}",
        f"{fmt} header, index and {tensors} tensor entries read strictly; config agrees with every tensor shape",
        tensors,
        format=fmt,
        metrics={"tensors": tensors, "architecture": model.config.architecture},
    ), model


def integrity_checks(
    artifacts: dict[Format, Path], digests: dict[Format, str], source: Format, expected_sha256: str | None
) -> tuple[list[Check], dict[Format, CanonicalModel]]:
    """G0 for the source digest and every artifact; returns the models that loaded, for the other gates."""
    checks = [sha256_check(artifacts[source], digests[source], expected_sha256, source)]
    models: dict[Format, CanonicalModel] = {}
    for fmt, path in artifacts.items():
        check, model = load_check(path, fmt)
        checks.append(check)
        if model is not None and check.outcome.value == "corroborated":
            models[fmt] = model
    return checks, models
