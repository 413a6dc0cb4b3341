"""Playbooks: the pydantic schema of what to certify (model, matrix, scenarios, gates, tier) and its loader.

``load_playbook(path)`` reads our YAML format (``apr_playbook: 1``) and the upstream
apr-model-qa-playbook format (detected by ``test_matrix``; translated, with every key it does not
use reported by name in ``Playbook.unused_keys``). Our format rejects unknown keys. Any YAML or
schema error becomes one ``AprError`` line naming file, line and field.

``python -m apr.qa.playbook --write-schema`` regenerates ``playbooks/playbook.schema.json``.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from apr.errors import AprError
from apr.qa.axes import Backend, Format, Modality, Tier
from apr.qa.endpoint.spec import EndpointSpec
from apr.qa.gates.thresholds import GateSet
from apr.qa.matrix import Cell
from apr.qa.oracles.base import GarbageSpec
from apr.qa.playbook_yaml import SourceMap, read_with_extends
from apr.qa.scenarios import Prompt, ScenarioSettings, assign, generate_prompts
from apr.qa.selftest.spec import SelfTestSpec

# playbooks/playbook.schema.json in a checkout (through the package's link), a real file in a wheel.
SCHEMA_PATH = Path(__file__).resolve().parent / "playbook.schema.json"
Architecture = Literal["qwen2", "llama", "gemma3"]


class FailurePolicy(StrEnum):
    COLLECT_ALL = "collect_all"  # run every cell whatever fails
    STOP_ON_FIRST_P0 = "stop_on_first_p0"  # stop scheduling cells after the first failure of a P0 gate


def _unique(values: tuple, what: str) -> tuple:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists a value twice")
    return values


class ModelSpec(BaseModel):
    """The model under test."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: str = Field(min_length=1, description="hub ref (qwen2.5-coder:1.5b, hf://ORG/REPO) or a path")
    path: str | None = Field(None, description="local file that overrides ref (relative paths: to the playbook)")
    architecture: Architecture | None = None
    family: str | None = None
    parameters: str | None = Field(None, description="parameter count as written, e.g. 1.5B")
    chat_template: bool = Field(True, description="false for base models: no chat modality, completion prompts")
    notes: str = ""


class MatrixSpec(BaseModel):
    """The axes of the cell matrix. ``omitted`` names modalities left out on purpose, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    formats: tuple[Format, ...] = Field((Format.GGUF, Format.SAFETENSORS, Format.APR), min_length=1)
    backends: tuple[Backend, ...] = Field((Backend.CPU, Backend.GPU), min_length=1)
    modalities: tuple[Modality, ...] = Field((Modality.RUN, Modality.CHAT, Modality.SERVE), min_length=1)
    omitted: dict[Modality, str] = Field(default_factory=dict)

    @field_validator("formats", "backends", "modalities")
    @classmethod
    def _no_duplicates(cls, value: tuple) -> tuple:
        return _unique(value, "the list")

    @model_validator(mode="after")
    def _omitted_not_listed(self) -> MatrixSpec:
        both = set(self.omitted) & set(self.modalities)
        if both:
            raise ValueError(f"modality {sorted(both)[0]} is both listed and omitted")
        if any(not reason.strip() for reason in self.omitted.values()):
            raise ValueError("an omitted modality needs a reason")
        return self


class ExecutionSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(120.0, gt=0, description="per-cell deadline; past it the cell is recorded as timeout")
    workers: int = Field(1, ge=1, le=64)
    failure_policy: FailurePolicy = FailurePolicy.COLLECT_ALL


class PlaybookTemplate(BaseModel):
    """A tier template: everything of a playbook except the model (``playbooks/templates/*.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    apr_playbook: Literal[1] = Field(description="format marker and version of this schema")
    tier: Tier
    description: str = ""
    extends: str | None = Field(None, description="template this file builds on, relative to this file")
    matrix: MatrixSpec = MatrixSpec()
    scenarios: ScenarioSettings = ScenarioSettings()
    execution: ExecutionSpec = ExecutionSpec()
    gates: GateSet = GateSet()
    self_test: SelfTestSpec | None = Field(None, description="planted-defect self-test of the gates (full tier)")


class Playbook(PlaybookTemplate):
    """A model playbook: a template plus the model, a name and a version."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]{0,79}$")
    version: str = Field("1.0.0", pattern=r"^\d+\.\d+\.\d+$")
    model: ModelSpec
    endpoint: EndpointSpec | None = Field(
        None,
        description="certify this remote OpenAI-compatible endpoint instead of model.ref's files (docs/endpoint.md): "
        "the scenarios, oracles and API-level gates run against it; the matrix is not used",
    )

    _source: Path | None = PrivateAttr(None)
    _unused_keys: tuple[str, ...] = PrivateAttr(())
    _source_format: str = PrivateAttr("apr")

    @model_validator(mode="after")
    def _chat_needs_template(self) -> Playbook:
        if not self.model.chat_template and Modality.CHAT in self.matrix.modalities:
            raise ValueError(
                "matrix.modalities has chat but model.chat_template is false: "
                "a base model has no chat template; move chat to matrix.omitted with the reason"
            )
        return self

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def unused_keys(self) -> tuple[str, ...]:
        """Upstream keys this loader did not translate ('key.path (line N)'); empty for our format."""
        return self._unused_keys

    @property
    def source_format(self) -> str:
        return self._source_format

    def model_path(self) -> Path | None:
        """``model.path`` resolved against the playbook's directory, or None when the ref is used."""
        if self.model.path is None:
            return None
        path = Path(self.model.path).expanduser()
        return path if path.is_absolute() or self._source is None else self._source.parent / path

    def with_model_path(self, path: Path | str) -> Playbook:
        """A copy whose model.path is ``path`` (the CLI's ``--model-path``)."""
        copy = self.model_copy(update={"model": self.model.model_copy(update={"path": str(Path(path).resolve())})})
        copy._source, copy._unused_keys, copy._source_format = self._source, self._unused_keys, self._source_format
        return copy

    def garbage_spec(self) -> GarbageSpec:
        quality = self.gates.g4_quality
        return GarbageSpec(
            max_repetition_ratio=quality.max_repetition_ratio,
            min_unique_chars=quality.min_unique_chars,
            max_token_share=quality.max_token_share,
        )

    def prompts(self) -> list[Prompt]:
        """Every scenario prompt, reproducible from (playbook, seed)."""
        return generate_prompts(self.scenarios, self.garbage_spec())

    def cells(self) -> list[Cell]:
        """The cell matrix: formats × backends × modalities × the prompts assigned to each format×modality."""
        prompts = self.prompts()
        combos = list(itertools.product(self.matrix.formats, self.matrix.modalities))
        assigned = {combo: assign(prompts, index, self.scenarios.per_cell) for index, combo in enumerate(combos)}
        return [
            Cell(format=fmt, backend=backend, modality=modality, prompt=prompt, seed=self.scenarios.seed)
            for fmt in self.matrix.formats
            for backend in self.matrix.backends
            for modality in self.matrix.modalities
            for prompt in assigned[(fmt, modality)]
        ]


_T = TypeVar("_T", bound=PlaybookTemplate)


def _describe(error: Mapping[str, Any], source: SourceMap, path: Path) -> str:
    loc = tuple(error["loc"])
    position = source.locate(loc)
    file, line = position if position else (path, 1)
    field = ".".join(str(part) for part in loc) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (not in the playbook schema; see playbooks/playbook.schema.json)"
    elif error["type"] == "missing":
        message = "required field missing"
    return f"{file}:{line}: {field}: {message}"


def _validate(model: type[_T], data: dict, source: SourceMap, path: Path) -> _T:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        # An unknown key is usually the cause of a "missing" error beside it (a typo): report it first.
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise AprError(f"{_describe(errors[0], source, path)}{more}") from None


def load_playbook(path: Path | str) -> Playbook:
    """Load and validate a model playbook (our format or upstream's); AprError names file:line: field."""
    from apr.qa import playbook_upstream

    path = Path(path)
    data, source = read_with_extends(path)
    unused: tuple[str, ...] = ()
    source_format = "apr"
    if playbook_upstream.is_upstream(data):
        data, source, unused = playbook_upstream.translate(data, source, path)
        source_format = "upstream"
    elif "apr_playbook" not in data:
        raise AprError(
            f"{path}:1: not a playbook: expected 'apr_playbook: 1' (apr format) or 'test_matrix' "
            "(upstream apr-model-qa-playbook format)"
        )
    playbook = _validate(Playbook, data, source, path)
    playbook._source, playbook._unused_keys, playbook._source_format = path.resolve(), unused, source_format
    return playbook


def load_template(path: Path | str) -> PlaybookTemplate:
    """Load and validate a tier template (a playbook without model, name and version)."""
    path = Path(path)
    data, source = read_with_extends(path)
    return _validate(PlaybookTemplate, data, source, path)


def json_schema() -> dict:
    """The JSON Schema of model playbooks, generated from the pydantic models."""
    schema = Playbook.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "apr playbook"
    return schema


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def _write_schema(target: Path) -> None:
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(schema_text(), encoding="utf-8")
    tmp.replace(target)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-schema"]:
        sys.exit("usage: python -m apr.qa.playbook --write-schema")
    _write_schema(SCHEMA_PATH.resolve())  # the file behind the link, which stays a link
    print(f"wrote {SCHEMA_PATH}")
