"""One planned cell of the certification matrix: format × backend × modality × scenario prompt."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from apr.qa.axes import Backend, Format, Modality
from apr.qa.scenarios import Prompt


class Cell(BaseModel):
    """One planned cell: a format × backend × modality × scenario prompt, before any model path is known.

    The executor turns it into a runnable ``apr.qa.invocation.Invocation`` (adding the artifact path and the
    timeout). ``key`` is the identity `--resume` matches on; it has the same shape as
    ``apr.qa.invocation.Invocation.key``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Format
    backend: Backend
    modality: Modality
    prompt: Prompt
    seed: int

    @property
    def key(self) -> str:
        return f"{self.format}/{self.backend}/{self.modality}/{self.prompt.id}/seed{self.seed}"
