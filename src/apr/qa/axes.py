"""The axes of the certification matrix: format, backend, modality, and the certification tier."""

from __future__ import annotations

from enum import StrEnum


class Format(StrEnum):
    """A checkpoint file format the workbench reads, writes and runs."""

    GGUF = "gguf"
    SAFETENSORS = "safetensors"
    APR = "apr"


class Backend(StrEnum):
    """Where the engine computes: ``gpu`` means CUDA; without CUDA its cells are skipped, never passed."""

    CPU = "cpu"
    GPU = "gpu"

    @property
    def device(self) -> str:
        """The ``--device`` value the CLI takes for this backend."""
        return "cuda" if self is Backend.GPU else "cpu"


class Modality(StrEnum):
    """How the model is driven: one-shot ``apr run``, ``apr chat`` on stdin, ``apr serve`` over HTTP."""

    RUN = "run"
    CHAT = "chat"
    SERVE = "serve"


class Tier(StrEnum):
    """How deep a certification goes, from a minute-long smoke test to the full matrix."""

    QUICK = "quick"
    SMOKE = "smoke"
    MVP = "mvp"
    STANDARD = "standard"
    FULL = "full"
