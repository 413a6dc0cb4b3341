"""The ``gates:`` section of a playbook: which gates run, each with its typed thresholds.

A gate listed (even as ``GATE-ID: {}`` or with no value) runs; an unlisted gate does not. The five
gateways G0–G4 always run: they cannot be disabled, listing them only sets their thresholds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from apr.qa.axes import Backend, Modality
from apr.qa.gates.catalog import GATEWAYS, GateId

DEFAULT_MIN_TOK_S: dict[Backend, float] = {Backend.CPU: 1.0, Backend.GPU: 10.0}


class GateSettings(BaseModel):
    """A gate without thresholds of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class IntegrityGate(GateSettings):
    verify_sha256: bool = True  # compare the file's sha256 with the one recorded by the hub


class QualityGate(GateSettings):
    """G4 thresholds, handed to the garbage oracle of every scenario prompt."""

    max_repetition_ratio: float = Field(0.5, ge=0, le=1)  # said twice passes, three times is a loop
    min_unique_chars: int = Field(10, ge=1)
    max_token_share: float = Field(0.5, gt=0, le=1)


class GoldenCase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1)
    expect_any: tuple[str, ...] = Field(min_length=1)
    capability: str | None = None  # what the case probes (arithmetic, facts, code...), shown in the evidence


class GoldenOutputGate(GateSettings):
    cases: tuple[GoldenCase, ...] = (GoldenCase(prompt="What is 2+2?", expect_any=("4",)),)
    max_tokens: int = Field(64, ge=1)


class StopBehaviorGate(GateSettings):
    """Short questions that want one line: a chat model's greedy reply must end on an eos id on its own."""

    prompts: tuple[str, ...] = Field(
        ("What is the capital of France?", "Say hello.", "What is 2+2?"),
        min_length=1,
    )
    max_tokens: int = Field(128, ge=8)  # the token limit of each reply
    max_fraction: float = Field(
        0.75, gt=0, le=1
    )  # a reply longer than this share of the limit did not stop "well before" it


class PerplexityGate(GateSettings):
    """Teacher-forced mean negative log-likelihood (nats per token) of fixed texts: a damaged network loses the
    language first. The default limit is far above any working model's score and far below a broken one's."""

    texts: tuple[str, ...] = Field(
        (
            "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is the "
            "capital of Germany. Water boils at one hundred degrees Celsius at sea level.",
            "def add(a, b):\n    return a + b\n\n\ndef multiply(a, b):\n    return a * b\n",
            "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. One, two, three, four, five, six.",
        ),
        min_length=1,
    )
    max_mean_nll: float = Field(4.5, gt=0)


class ParityGate(GateSettings):
    """Logit parity: greedy top-1 agreement and mean KL(reference ‖ candidate) over the prompt positions."""

    min_top1_agreement: float = Field(0.9, ge=0, le=1)
    max_kl: float = Field(0.1, ge=0)
    prompts: tuple[str, ...] = Field(("What is 2+2?", "def fibonacci(n):", "你好，世界"), min_length=1)


class NumericsGate(GateSettings):
    """|log p_fast − log p_exact| per token of ``texts`` (source format, CPU). The fast kernels quantize
    activations to int8, so a few tenths of a nat per token is their normal cost (measured 2026-12-04: smollm2
    mean 0.14, max 1.17; gemma3 mean 0.06, max 0.57); whole nats on average mean a kernel defect."""

    max_mean_nats: float = Field(0.5, gt=0)
    max_abs_nats: float = Field(3.0, gt=0)
    texts: tuple[str, ...] = Field(
        (
            "The quick brown fox jumps over the lazy dog. A certification tool must be trusted more than the "
            "eyes of the person who ships the model.",
            "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
            "你好，世界。今天的天气很好，我们去公园散步吧。",
        ),
        min_length=1,
    )


class TokenizerParityGate(GateSettings):
    corpus: tuple[str, ...] = Field(
        (
            "Hello, world!",
            "def add(a, b):\n    return a + b\n",
            "你好，世界 — café naïve Zürich 🙂",
            "  leading and trailing spaces  ",
            "x = [i**2 for i in range(10)]  # squares",
        ),
        min_length=1,
    )


class DeterminismGate(GateSettings):
    repeats: int = Field(2, ge=2)
    modalities: tuple[Modality, ...] = Field((Modality.RUN, Modality.CHAT, Modality.SERVE), min_length=1)


class AttentionTraceGate(GateSettings):
    min_normalized_entropy: float = Field(0.05, ge=0, le=1)  # below: attention collapsed onto one key
    max_first_position_mass: float = Field(0.95, gt=0, le=1)  # above: every head only attends to position 0


class ThroughputGate(GateSettings):
    """Per-backend minimum decode tok/s; a backend left out keeps its default."""

    min_tok_s: dict[Backend, float] = Field(default_factory=lambda: dict(DEFAULT_MIN_TOK_S))

    @field_validator("min_tok_s")
    @classmethod
    def _positive_and_complete(cls, value: dict[Backend, float]) -> dict[Backend, float]:
        if any(v <= 0 for v in value.values()):
            raise ValueError("minimum tok/s must be positive")
        return DEFAULT_MIN_TOK_S | value


class GpuSpeedupGate(GateSettings):
    min_speedup: float = Field(2.0, gt=0)


class FunctionalCorrectnessGate(GateSettings):
    """FUNCTIONAL-CORRECTNESS (apr.qa.gates.functional): `apr eval` on every format and on the reference (the
    SafeTensors artifact with ``reference_numerics``); each format's pass@1 must lie within ``tolerance`` of the
    reference's, on the same problems."""

    task: Literal["humaneval", "mbpp", "humaneval+", "mbpp+"] = "humaneval"
    data: str | None = None  # the problems file; required for every task but humaneval (no package ships them)
    limit: int | None = Field(None, ge=1)  # the first N problems; None: all
    tolerance: float = Field(0.05, ge=0, le=1)  # most |pass@1(format) - pass@1(reference)|, as a fraction
    max_tokens: int = Field(512, ge=1)
    batch_size: int = Field(8, ge=1)
    reference_numerics: Literal["exact", "fast"] = "exact"
    timeout_s: float = Field(6 * 3600.0, gt=0)  # per `apr eval` run


class FimGate(GateSettings):
    """FIM (apr.qa.gates.serve_features): the fixed Python cases of ``apr.qa.coder_cases``, greedy, through
    `apr serve` /v1/completions with ``suffix``; one record per case and served format."""

    cases: int | None = Field(None, ge=1)  # the first N cases; None: all
    max_tokens: int = Field(64, ge=1, le=4096)
    run_tests: bool = True  # run each case's assertion on prefix + middle + suffix in the eval sandbox


class ToolCallsGate(GateSettings):
    """TOOL-CALLS: the fixed requests of ``apr.qa.coder_cases`` with one tools list, greedy."""

    cases: int | None = Field(None, ge=1)
    max_tokens: int = Field(128, ge=1, le=4096)
    # auto: the model must decide to call, and which (what agents send by default); required: the server's
    # grammar forces a call and the model chooses which function and its arguments.
    tool_choice: Literal["auto", "required"] = "auto"


class JsonModeGate(GateSettings):
    """JSON-MODE: the fixed requests of ``apr.qa.coder_cases`` with a json_schema response_format, greedy."""

    cases: int | None = Field(None, ge=1)
    max_tokens: int = Field(160, ge=1, le=4096)


class EmbeddingsGate(GateSettings):
    """EMBEDDINGS: over the fixed (anchor, paraphrase, unrelated) triples of ``apr.qa.coder_cases``, the share
    of triples with cos(anchor, paraphrase) > cos(anchor, unrelated) + ``min_margin`` must reach
    ``min_ordered_fraction``; one record per served format."""

    min_ordered_fraction: float = Field(1.0, gt=0, le=1)
    min_margin: float = Field(0.0, ge=0, le=2)


def _listed(value: Any) -> Any:
    # `GATE-ID:` with no value in YAML means "run with defaults".
    return {} if value is None else value


class GateSet(BaseModel):
    """Gates keyed by their id as written in YAML (``G4-QUALITY: {...}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    g0_integrity: IntegrityGate = Field(IntegrityGate(), alias="G0-INTEGRITY")
    g1_load: GateSettings = Field(GateSettings(), alias="G1-LOAD")
    g2_inference: GateSettings = Field(GateSettings(), alias="G2-INFERENCE")
    g3_stability: GateSettings = Field(GateSettings(), alias="G3-STABILITY")
    g4_quality: QualityGate = Field(QualityGate(), alias="G4-QUALITY")
    contract_invariants: GateSettings | None = Field(None, alias="CONTRACT-INVARIANTS")
    metadata_plausibility: GateSettings | None = Field(None, alias="METADATA-PLAUSIBILITY")
    structure: GateSettings | None = Field(None, alias="STRUCTURE")
    golden_output: GoldenOutputGate | None = Field(None, alias="GOLDEN-OUTPUT")
    stop_behavior: StopBehaviorGate | None = Field(None, alias="STOP-BEHAVIOR")
    perplexity: PerplexityGate | None = Field(None, alias="PERPLEXITY")
    format_parity: ParityGate | None = Field(None, alias="FORMAT-PARITY")
    reference_parity: ParityGate | None = Field(None, alias="REFERENCE-PARITY")
    numerics_parity: NumericsGate | None = Field(None, alias="NUMERICS-PARITY")
    tokenizer_parity: TokenizerParityGate | None = Field(None, alias="TOKENIZER-PARITY")
    determinism: DeterminismGate | None = Field(None, alias="DETERMINISM")
    attention_trace: AttentionTraceGate | None = Field(None, alias="ATTENTION-TRACE")
    throughput: ThroughputGate | None = Field(None, alias="THROUGHPUT")
    gpu_speedup: GpuSpeedupGate | None = Field(None, alias="GPU-SPEEDUP")
    functional_correctness: FunctionalCorrectnessGate | None = Field(None, alias="FUNCTIONAL-CORRECTNESS")
    fim: FimGate | None = Field(None, alias="FIM")
    tool_calls: ToolCallsGate | None = Field(None, alias="TOOL-CALLS")
    json_mode: JsonModeGate | None = Field(None, alias="JSON-MODE")
    embeddings: EmbeddingsGate | None = Field(None, alias="EMBEDDINGS")

    @field_validator("*", mode="before")
    @classmethod
    def _none_means_defaults(cls, value: Any) -> Any:
        return _listed(value)

    def get(self, gate: GateId) -> GateSettings | None:
        """The settings of ``gate`` if it runs in this playbook, else None."""
        return getattr(self, gate.name.lower())

    def enabled(self) -> tuple[GateId, ...]:
        """Every gate that runs: the gateways always, then the listed gates, in catalog order."""
        return tuple(gate for gate in GateId if gate in GATEWAYS or self.get(gate) is not None)


if {GateId(str(field.alias)) for field in GateSet.model_fields.values()} != set(GateId):
    raise RuntimeError("GateSet must have one field per GateId")  # a new gate id without settings is a bug
