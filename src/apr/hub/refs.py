"""Parsing of model references: registry refs (`name:tag`), `hf://ORG/REPO[/FILE]`, and local paths."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from apr.errors import HubError
from apr.hub.catalog import RegistryModel

HF_SCHEME = "hf://"
_NAME_TAG = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]*):(?P<tag>[a-z0-9][a-z0-9._-]*)$")
_BARE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class RegistryRef:
    """A ref resolved to an entry of the registry table."""

    model: RegistryModel

    @property
    def text(self) -> str:
        return self.model.ref


@dataclass(frozen=True)
class HfRef:
    """``hf://ORG/REPO`` (pick the file) or ``hf://ORG/REPO/FILE`` (that file)."""

    repo_id: str
    filename: str | None

    @property
    def text(self) -> str:
        suffix = f"/{self.filename}" if self.filename else ""
        return f"{HF_SCHEME}{self.repo_id}{suffix}"


@dataclass(frozen=True)
class LocalRef:
    """A model file or directory already on disk (absolute, resolved path)."""

    path: Path

    @property
    def text(self) -> str:
        return str(self.path)


Ref = RegistryRef | HfRef | LocalRef


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or "/" in text or "\\" in text or text in (".", "..")


def _parse_hf(text: str) -> HfRef:
    body = text[len(HF_SCHEME) :].strip("/")
    pieces = [piece for piece in body.split("/") if piece]
    if len(pieces) < 2:
        raise HubError(
            f"bad ref '{text}': expected hf://ORG/REPO or hf://ORG/REPO/FILE "
            "(e.g. hf://Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF)"
        )
    for piece in pieces:
        if not _HF_PART.match(piece) or ".." in piece:
            raise HubError(f"bad ref '{text}': '{piece}' is not a valid Hugging Face repo or file name")
    repo_id = "/".join(pieces[:2])
    filename = "/".join(pieces[2:]) or None
    return HfRef(repo_id=repo_id, filename=filename)


def _known_refs(catalog: Mapping[str, RegistryModel]) -> str:
    return ", ".join(sorted(catalog))


def parse_ref(text: str, catalog: Mapping[str, RegistryModel]) -> Ref:
    """Turn user text into a ref; raise HubError with the known refs when it names nothing."""
    text = text.strip()
    if not text:
        raise HubError(f"empty model ref; use one of {_known_refs(catalog)}, hf://ORG/REPO[/FILE], or a path")
    if text.startswith(HF_SCHEME):
        return _parse_hf(text)
    candidate = Path(text).expanduser()
    if candidate.exists():
        return LocalRef(candidate.resolve())
    if _looks_like_path(text):
        raise HubError(f"{text}: no such file or directory; give an existing model path or a ref")
    lowered = text.lower()
    if lowered in catalog:
        return RegistryRef(catalog[lowered])
    if _NAME_TAG.match(lowered):
        raise HubError(
            f"unknown model ref '{text}'; known refs: {_known_refs(catalog)} "
            "(or use hf://ORG/REPO[/FILE] or a local path)"
        )
    if _BARE_NAME.match(lowered):
        matches = sorted(ref for ref in catalog if ref.split(":", 1)[0] == lowered)
        hint = f"did you mean {' or '.join(matches)}?" if matches else f"known refs: {_known_refs(catalog)}"
        raise HubError(f"model ref '{text}' has no tag (NAME:TAG); {hint}")
    raise HubError(
        f"bad model ref '{text}': expected NAME:TAG (e.g. {next(iter(sorted(catalog)), 'smollm2:135m')}), "
        "hf://ORG/REPO[/FILE], or a path to a model file"
    )
