"""The one table of gate ids: what each gate checks, its MQS category, severity, whether it is a gateway, and what
it needs to run (the checkpoint's files, apr's own engine, or only an OpenAI-compatible API)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class GateId(StrEnum):
    """Every gate the workbench knows. Evidence records name exactly one of these."""

    G0_INTEGRITY = "G0-INTEGRITY"
    G1_LOAD = "G1-LOAD"
    G2_INFERENCE = "G2-INFERENCE"
    G3_STABILITY = "G3-STABILITY"
    G4_QUALITY = "G4-QUALITY"
    CONTRACT_INVARIANTS = "CONTRACT-INVARIANTS"
    METADATA_PLAUSIBILITY = "METADATA-PLAUSIBILITY"
    STRUCTURE = "STRUCTURE"
    GOLDEN_OUTPUT = "GOLDEN-OUTPUT"
    STOP_BEHAVIOR = "STOP-BEHAVIOR"
    PERPLEXITY = "PERPLEXITY"
    FORMAT_PARITY = "FORMAT-PARITY"
    REFERENCE_PARITY = "REFERENCE-PARITY"
    NUMERICS_PARITY = "NUMERICS-PARITY"
    TOKENIZER_PARITY = "TOKENIZER-PARITY"
    DETERMINISM = "DETERMINISM"
    ATTENTION_TRACE = "ATTENTION-TRACE"
    THROUGHPUT = "THROUGHPUT"
    GPU_SPEEDUP = "GPU-SPEEDUP"
    FUNCTIONAL_CORRECTNESS = "FUNCTIONAL-CORRECTNESS"  # apr.qa.gates.functional (`full` tier)
    # apr serve's code-tool features (apr.qa.gates.serve_features, `full` tier)
    FIM = "FIM"
    TOOL_CALLS = "TOOL-CALLS"
    JSON_MODE = "JSON-MODE"
    EMBEDDINGS = "EMBEDDINGS"


class Category(StrEnum):
    """MQS categories; their weights (``CATEGORY_WEIGHTS``) add up to 1000."""

    INTEGRITY = "integrity"
    EXECUTION = "execution"
    QUALITY = "quality"
    PARITY = "parity"
    CONSISTENCY = "consistency"
    PERFORMANCE = "performance"


class Severity(StrEnum):
    """P0 gates block certification when they fail; P1/P2 failures only cost points."""

    P0 = "P0"
    P1 = "P1"
    P2 = "P2"


class Needs(StrEnum):
    """What a gate must reach to run. Only ``api`` gates can judge a remote endpoint (``apr certify --endpoint``):
    the others are recorded there as not applicable, never as passes."""

    API = "api"  # replies, finish reasons, token usage and timings, as any OpenAI-compatible server gives them
    FILES = "files"  # the checkpoint's bytes: digests, tensors, metadata, tokenizer
    ENGINE = "engine"  # apr's own engine on the files: logits, attention, numerics modes, formats and backends


CATEGORY_WEIGHTS: dict[Category, int] = {
    Category.INTEGRITY: 200,
    Category.EXECUTION: 200,
    Category.QUALITY: 200,
    Category.PARITY: 250,
    Category.CONSISTENCY: 50,
    Category.PERFORMANCE: 100,
}


@dataclass(frozen=True)
class GateSpec:
    """One row of the catalog."""

    id: GateId
    title: str  # display name, as in the `apr qa` table
    category: Category
    severity: Severity
    gateway: bool  # a gateway that did not pass zeroes the MQS
    checks: str  # what the gate checks, in one sentence
    needs: Needs  # what it must reach to run: only API gates can judge a remote endpoint

    @property
    def blocking(self) -> bool:
        """A failure of this gate makes the status BLOCKED (every gateway is P0)."""
        return self.severity is Severity.P0


def _spec(
    gate: GateId,
    title: str,
    category: Category,
    severity: Severity,
    checks: str,
    *,
    needs: Needs,
    gateway: bool = False,
) -> GateSpec:
    return GateSpec(gate, title, category, severity, gateway, checks, needs)


_I, _E, _Q, _P, _C, _F = (
    Category.INTEGRITY,
    Category.EXECUTION,
    Category.QUALITY,
    Category.PARITY,
    Category.CONSISTENCY,
    Category.PERFORMANCE,
)
_P0, _P1, _P2 = Severity.P0, Severity.P1, Severity.P2
_api, _files, _engine = Needs.API, Needs.FILES, Needs.ENGINE

CATALOG: dict[GateId, GateSpec] = {
    spec.id: spec
    for spec in (
        _spec(
            GateId.G0_INTEGRITY,
            "Integrity",
            _I,
            _P0,
            "file sha256 matches, header parses, CRCs verify, config agrees with the tensors",
            gateway=True,
            needs=_files,
        ),
        _spec(
            GateId.G1_LOAD,
            "Load",
            _E,
            _P0,
            "the model loads in every format and backend under test (an endpoint: the served model answers)",
            gateway=True,
            needs=_api,
        ),
        _spec(
            GateId.G2_INFERENCE,
            "Inference",
            _E,
            _P0,
            "every cell exits cleanly and produces a reply (non-empty unless the prompt allows a clean refusal)",
            gateway=True,
            needs=_api,
        ),
        _spec(
            GateId.G3_STABILITY,
            "Stability",
            _E,
            _P0,
            "no crash (signal, traceback, HTTP 5xx) and no timeout anywhere in the run",
            gateway=True,
            needs=_api,
        ),
        _spec(
            GateId.G4_QUALITY,
            "Output Quality",
            _Q,
            _P0,
            "the scenario oracles (arithmetic, code, garbage, expected text, stops on EOS, non-empty) pass",
            gateway=True,
            needs=_api,
        ),
        _spec(
            GateId.CONTRACT_INVARIANTS,
            "Tensor Contract",
            _I,
            _P0,
            "shapes match the config, dtypes consistent, no NaN/Inf, byte sizes match shapes, tokenizer present",
            needs=_files,
        ),
        _spec(
            GateId.METADATA_PLAUSIBILITY,
            "Metadata Plausibility",
            _I,
            _P0,
            "config values within plausible bounds (rope theta per architecture, eps, context length, head counts)",
            needs=_files,
        ),
        _spec(
            GateId.STRUCTURE,
            "Structure",
            _I,
            _P0,
            "rope theta plausible, qwen2 q/k/v biases present and non-zero, norm weights non-zero, "
            "embeddings not transposed",
            needs=_files,
        ),
        _spec(
            GateId.GOLDEN_OUTPUT,
            "Golden Output",
            _Q,
            _P0,
            "greedy answers to fixed golden prompts contain the expected text (e.g. 2+2 -> 4)",
            needs=_api,
        ),
        _spec(
            GateId.STOP_BEHAVIOR,
            "Stop Behavior",
            _Q,
            _P0,
            "eos ids exist, are end tokens and match the chat template's end of turn; short greedy replies end "
            "on their own well before the token limit",
            needs=_api,
        ),
        _spec(
            GateId.PERPLEXITY,
            "Perplexity",
            _Q,
            _P0,
            "mean negative log-likelihood of fixed natural text and code stays below the playbook's limit",
            needs=_engine,
        ),
        _spec(
            GateId.FORMAT_PARITY,
            "Format Parity",
            _P,
            _P0,
            "same prompts in every format: top-1 agreement and KL divergence of the logits within thresholds",
            needs=_engine,
        ),
        _spec(
            GateId.REFERENCE_PARITY,
            "Reference Parity",
            _P,
            _P0,
            "logits and greedy tokens agree with Hugging Face transformers within thresholds",
            needs=_engine,
        ),
        _spec(
            GateId.NUMERICS_PARITY,
            "Numerics Parity",
            _P,
            _P1,
            "the fast kernels' per-token log-likelihoods stay within bounds of the exact (float32 reference) mode",
            needs=_engine,
        ),
        _spec(
            GateId.TOKENIZER_PARITY,
            "Tokenizer Parity",
            _P,
            _P0,
            "identical token ids across formats on a fixed corpus with code and Unicode",
            needs=_files,
        ),
        _spec(
            GateId.DETERMINISM,
            "Determinism",
            _C,
            _P1,
            "same seed gives the same tokens in run, chat and serve",
            needs=_api,
        ),
        _spec(
            GateId.ATTENTION_TRACE,
            "Attention Trace",
            _C,
            _P1,
            "attention entropy not collapsed and not always attending to position 0",
            needs=_engine,
        ),
        _spec(
            GateId.THROUGHPUT,
            "Throughput",
            _F,
            _P2,
            "decode tok/s at or above the playbook's per-backend minimum",
            needs=_api,
        ),
        _spec(
            GateId.GPU_SPEEDUP,
            "GPU Speedup",
            _F,
            _P2,
            "GPU decode tok/s over CPU decode tok/s at or above the minimum",
            needs=_engine,
        ),
        _spec(
            GateId.FUNCTIONAL_CORRECTNESS,
            "Functional Correctness",
            _Q,
            _P1,
            "HumanEval/MBPP pass@1 of every format within the playbook's tolerance of the SafeTensors reference's, "
            "problem by problem",
            needs=_engine,
        ),
        # The serve features are quality (what a client gets back), P1: optional features probed on a handful
        # of fixed cases, so a miss costs points without blocking; a model without the feature records them
        # not_applicable, which leaves the gate out of the MQS plan (apr.qa.score). On a checkpoint they start their
        # own `apr serve` per format (applicability read from the files); on an endpoint they ask it, and a request it
        # does not take makes the gate not applicable (apr.qa.endpoint.features): they need the API only.
        _spec(
            GateId.FIM,
            "Fill-in-the-Middle",
            _Q,
            _P1,
            "`apr serve` /v1/completions with a suffix: prefix + middle + suffix parses as Python and, where the "
            "case has one, passes its assertion in the sandbox (models with FIM tokens)",
            needs=_api,
        ),
        _spec(
            GateId.TOOL_CALLS,
            "Tool Calls",
            _Q,
            _P1,
            "`apr serve` chat with tools: one tool call, the right function, arguments valid JSON matching its schema "
            "(models whose chat template renders tools)",
            needs=_api,
        ),
        _spec(
            GateId.JSON_MODE,
            "JSON Mode",
            _Q,
            _P1,
            "`apr serve` chat with a json_schema response_format: the reply parses and matches the schema "
            "(models with a chat template)",
            needs=_api,
        ),
        _spec(
            GateId.EMBEDDINGS,
            "Embeddings",
            _Q,
            _P1,
            "`apr serve` /v1/embeddings: paraphrases are closer (cosine) than unrelated texts, over fixed triples",
            needs=_api,
        ),
    )
}

GATEWAYS: tuple[GateId, ...] = tuple(gate for gate, spec in CATALOG.items() if spec.gateway)
# The gates a remote OpenAI-compatible endpoint can be judged by; every other gate is not applicable to one.
ENDPOINT_GATES: frozenset[GateId] = frozenset(gate for gate, spec in CATALOG.items() if spec.needs is Needs.API)


def gates_in(category: Category) -> tuple[GateId, ...]:
    """The catalog's gates of one category, in catalog order."""
    return tuple(gate for gate, spec in CATALOG.items() if spec.category is category)


# Gates of features a model may lack (FIM tokens, a template that renders tools, a chat template): the only gates
# a checkpoint's evidence may record ``not_applicable`` (apr.qa.evidence refuses it elsewhere, so no other gate can
# opt out of the score).
FEATURE_GATES: frozenset[GateId] = frozenset({GateId.FIM, GateId.TOOL_CALLS, GateId.JSON_MODE, GateId.EMBEDDINGS})
