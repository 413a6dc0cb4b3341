"""The ``self_test:`` section of a playbook: which planted defects the self-test runs, on which formats."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from apr.qa.axes import Format
from apr.qa.selftest.defects import DEFECT_IDS


class SelfTestSpec(BaseModel):
    """Run by `apr qa --self-test MODEL --playbook P` and the Dagster ``self_test`` asset (docs/self-test.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    defects: tuple[str, ...] = Field(DEFECT_IDS, min_length=1, description="planted defect ids (default: all)")
    formats: tuple[Format, ...] = Field(
        (Format.GGUF,),
        min_length=1,
        description="formats each copy is gated in; more than gguf adds format/reference parity (and conversions)",
    )

    @field_validator("defects")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [d for d in value if d not in DEFECT_IDS]
        if unknown:
            raise ValueError(f"unknown defect {unknown[0]!r}; choose from {', '.join(DEFECT_IDS)}")
        return value
