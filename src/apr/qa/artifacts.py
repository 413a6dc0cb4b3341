"""The certification's artifacts: the source checkpoint plus its conversions into every format of the matrix.

Conversions are cached in ``$APR_HOME/artifacts/<source sha256[:16]>/model.<fmt>`` (not next to the
evidence: ``certifications/`` is committed, and a 1.5B model's conversions are gigabytes), each with a
``.source-sha256`` stamp, reused only when the stamp names the same source digest.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from apr.errors import AprError
from apr.qa.axes import Format

if TYPE_CHECKING:
    from apr.formats.convert import DtypeChoice

ARTIFACT_NAMES = {Format.GGUF: "model.gguf", Format.APR: "model.apr", Format.SAFETENSORS: "safetensors"}
# SafeTensors cannot hold GGML blocks: quantized sources are widened. bf16 halves the size of f32 and is what
# transformers and our engine both read natively.
SAFETENSORS_DTYPE = "bf16"


@dataclass
class Artifacts:
    """Paths (and digests) per format that exist, and why the others do not."""

    source: Format
    paths: dict[Format, Path] = field(default_factory=dict)
    failures: dict[Format, str] = field(default_factory=dict)
    digests: dict[Format, str] = field(default_factory=dict)  # sha256 per artifact, as evidence cites it
    converted: dict[Format, float] = field(default_factory=dict)  # seconds spent converting, per format


def artifacts_dir(source_sha: str) -> Path:
    """Where the conversions of the checkpoint with this digest live."""
    from apr.hub.cache import default_home

    return default_home() / "artifacts" / source_sha[:16]


def source_format(path: Path) -> Format:
    from apr.formats.detect import detect_format

    return Format(detect_format(path))


def _stamp(target: Path) -> Path:
    return target.with_name(target.name + ".source-sha256")


def _cached(target: Path, source_sha: str) -> bool:
    stamp = _stamp(target)
    return target.exists() and stamp.is_file() and stamp.read_text().strip() == source_sha


def _remove(target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()


def convert_format(source: Path, fmt: Format, target: Path, *, dtype: str | None = None, report: bool = False):
    """Write the checkpoint as ``fmt`` at ``target`` (SafeTensors widened to ``dtype``, default bf16); the one
    conversion call of a certification, whether `apr certify` or a Dagster artifact asset makes it."""
    from apr.formats.convert import convert

    if fmt is Format.SAFETENSORS:
        dtype = dtype or SAFETENSORS_DTYPE
    return convert(source, fmt.value, target, dtype=cast("DtypeChoice", dtype), report=report)


def prepare_artifacts(source: Path, source_sha: str, formats: tuple[Format, ...], directory: Path) -> Artifacts:
    """The source for its own format and a conversion for every other; failures are kept, not raised.

    The source is always an artifact (model-level gates check the checkpoint as given), even when the
    matrix leaves its format out."""
    import time

    kind = source_format(source)
    result = Artifacts(source=kind)
    directory.mkdir(parents=True, exist_ok=True)
    result.paths[kind] = source
    for fmt in formats:
        if fmt is kind:
            result.paths[fmt] = source
            continue
        target = directory / ARTIFACT_NAMES[fmt]
        if _cached(target, source_sha):
            result.paths[fmt] = target
            continue
        _remove(target)
        started = time.monotonic()
        try:
            convert_format(source, fmt, target)
        except (AprError, ValueError, OSError) as err:
            result.failures[fmt] = f"{type(err).__name__}: {err}"
            continue
        _stamp(target).write_text(source_sha + "\n")
        result.paths[fmt] = target
        result.converted[fmt] = time.monotonic() - started
    return result
