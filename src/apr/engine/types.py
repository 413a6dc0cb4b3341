"""Plain data types of the engine API (no torch import): sampling parameters, token events, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]
# The KV cache's element type (`--kv-cache`): f32 (default) keeps the numbers the certifications were
# measured with; f16 halves the cache's memory and the bytes attention streams, on apr's native CPU
# layers only (the only path whose kernels read fp16 keys and values; docs/engine.md "KV cache in fp16").
KvCache = Literal["f32", "f16"]
KV_CACHES: tuple[KvCache, ...] = ("f32", "f16")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token and when to stop.

    temperature 0 is greedy (argmax). Any other temperature samples with a ``torch.Generator``
    seeded by ``seed``; ``seed=None`` means seed 0, so sampling is always reproducible.
    ``stop`` strings end generation and are not part of the text; ``stop_token_ids`` are added to
    the model's own EOS ids. ``logprobs`` is how many top alternatives to report per token.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        # Accept lists from callers but keep the dataclass hashable and immutable.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def effective_seed(self) -> int:
        return 0 if self.seed is None else self.seed


@dataclass(frozen=True)
class LookupConfig:
    """Prompt-lookup decoding (lookup.py): each step drafts up to ``draft_tokens`` tokens by finding the
    context's last n-gram (``max_ngram`` down to ``min_ngram`` tokens) earlier in the context, and verifies
    them in the same forward pass as the step's own token. Greedy output is the same token for token as
    without it; sampled output keeps its distribution (speculative sampling), not its exact draws."""

    draft_tokens: int = 10
    max_ngram: int = 3
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if self.draft_tokens < 1:
            raise ValueError(f"draft_tokens must be >= 1, got {self.draft_tokens}")
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {self.min_ngram}, {self.max_ngram}")


@dataclass(frozen=True)
class LookupStats:
    """How lookup decoding went for one request.

    ``steps``: forward passes after the first token (each one weight pass, drafted or not); ``drafted``:
    draft tokens verified; ``accepted``: those the model's own choice confirmed. Every step also yields
    one token of its own, so the tokens after the first are ``accepted`` plus the steps, less any rows a
    stop cut short."""

    draft_tokens: int
    steps: int
    drafted: int
    accepted: int
    generated: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens after the first per forward pass (1.0 is plain decoding)."""
        return (self.generated - 1) / self.steps if self.steps else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "draft_tokens": self.draft_tokens,
            "steps": self.steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "tokens_per_step": round(self.tokens_per_step, 4),
        }


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of one request.

    ``text`` is the UTF-8-safe increment: it is empty while a multibyte character or a possible
    stop string is still incomplete, and the held-back text comes out with a later event.
    ``finish_reason`` is None until the request's last event. With lookup decoding a request may get
    several events from one step.
    """

    request_id: str
    token_id: int
    text: str
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None
    finish_reason: FinishReason | None = None
    lookup: LookupStats | None = None  # on the last event of a request decoded with lookup


@dataclass(frozen=True)
class Timings:
    """Wall-clock figures of one generation, in seconds and tokens per second."""

    ttft_s: float
    prefill_tok_s: float
    decode_tok_s: float
    total_s: float

    def to_dict(self) -> dict[str, float]:
        return {
            "ttft_s": self.ttft_s,
            "prefill_tok_s": self.prefill_tok_s,
            "decode_tok_s": self.decode_tok_s,
            "total_s": self.total_s,
        }


@dataclass(frozen=True)
class GenerationResult:
    """A finished generation. ``token_ids`` are every generated id (an EOS that stopped it included)."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    logprobs: list[float] = field(default_factory=list)
    lookup: LookupStats | None = None
