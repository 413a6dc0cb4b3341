"""How to invoke the real CLI for one cell: the cell plus its artifact path, deadline and chat-template flag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from apr.qa.axes import Backend, Modality

ServeApi = Literal["chat", "completion"]
Numerics = Literal["fast", "exact"]


@dataclass(frozen=True)
class Invocation:
    """Everything a runner needs to drive the real CLI once, and the key that identifies it.

    ``model_path`` is the artifact of ``format`` (the certify run converts the model into each
    format first). ``use_chat_template`` says whether the model has one: `apr serve` cells use the
    chat API when it does and the completions API otherwise.
    """

    model_path: Path
    format: str
    backend: Backend
    modality: Modality
    scenario_id: str
    prompt: str
    seed: int
    max_tokens: int
    timeout_s: float
    use_chat_template: bool = True
    threads: int | None = None  # CPU threads of the program (OMP_NUM_THREADS); None: it chooses itself
    # "exact": the program runs with --numerics exact (the reply gates' second opinion, apr.qa.gates.second_opinion)
    numerics: Numerics = "fast"

    def environment(self) -> dict[str, str]:
        """The program's environment: ours, plus the thread count the certification chose for this machine."""
        from apr.qa.procs import child_env

        return child_env({"OMP_NUM_THREADS": str(self.threads)} if self.threads else None)

    @property
    def key(self) -> str:
        """Stable identity of the cell across runs: what `--resume` matches finished cells on."""
        return f"{self.format}/{self.backend}/{self.modality}/{self.scenario_id}/seed{self.seed}"

    @property
    def device(self) -> str:
        """The `--device` value the CLI takes for this backend."""
        return "cuda" if self.backend == "gpu" else "cpu"

    def engine_flags(self) -> list[str]:
        """The CLI options that pick the engine: device, and numerics when not the default."""
        return ["--device", self.device, *(["--numerics", self.numerics] if self.numerics != "fast" else [])]

    @property
    def serve_api(self) -> ServeApi:
        return "chat" if self.use_chat_template else "completion"
