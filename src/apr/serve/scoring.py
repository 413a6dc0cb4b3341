"""Log-probabilities of the prompt's own tokens, for `echo` + `logprobs` (lm-eval log-likelihood scoring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apr.engine import Engine


@dataclass(frozen=True)
class PromptScores:
    """Per prompt token: its log-probability given the tokens before it, and the `top` alternatives.

    The first token has no context, so both are None there (as in the OpenAI legacy API).
    """

    logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


def score_prompt(engine: Engine, prompt_ids: list[int], top: int) -> PromptScores:
    """Run on the scheduler thread: it calls the engine."""
    if top == 0:
        logprobs = list(engine.prompt_logprobs(prompt_ids))
        return PromptScores(logprobs=logprobs, top_logprobs=[None] * len(logprobs))
    import torch

    logits = engine.logits(prompt_ids)
    # Row i predicts token i + 1; the last row predicts a token the prompt does not have.
    chosen, tops = _scored_rows(torch.log_softmax(logits[:-1].float(), dim=-1), prompt_ids[1:], top)
    return PromptScores(logprobs=[None, *chosen], top_logprobs=[None, *tops])


@dataclass
class ChunkedScore:
    """`score_prompt` of a long prompt, `chunk` tokens per `step()`: the scheduler runs one step between two
    batch steps, so scoring a 4000-token prompt never holds the other streams up for more than one chunk.

    The prompt is prefilled into a private KV cache chunk by chunk; each chunk's rows are scored at once, so
    only `chunk` rows of logits ever exist (the whole-prompt path materializes all of them)."""

    engine: Engine
    prompt_ids: list[int]
    top: int
    chunk: int
    _cache: Any = None
    _logprobs: list[float | None] = field(default_factory=lambda: [None])
    _tops: list[dict[int, float] | None] = field(default_factory=lambda: [None])

    def step(self) -> bool:
        """Score the next chunk; True once the whole prompt is scored."""
        import torch

        transformer = self.engine.transformer
        if self._cache is None:
            self._cache = transformer.new_cache(len(self.prompt_ids))
        start = self._cache.length
        stop = min(len(self.prompt_ids), start + self.chunk)
        ids = torch.tensor(self.prompt_ids[start:stop], device=self.engine.device)
        hidden = transformer.prefill(ids, self._cache)
        # Row i predicts token start + i + 1; the prompt's last row predicts nothing it holds.
        targets = self.prompt_ids[start + 1 : stop + 1]
        rows = hidden[: len(targets)]
        if len(targets):
            log_probs = torch.log_softmax(transformer.head(rows).float().cpu(), dim=-1)
            chosen, tops = _scored_rows(log_probs, targets, self.top)
            self._logprobs.extend(chosen)
            self._tops.extend(tops if self.top else [None] * len(chosen))
        return stop == len(self.prompt_ids)

    def result(self) -> PromptScores:
        self._cache = None  # the cache is freed with the last chunk
        return PromptScores(logprobs=self._logprobs, top_logprobs=self._tops)


def _scored_rows(log_probs: Any, targets: list[int], top: int) -> tuple[list[float], list[dict[int, float] | None]]:
    """Each row's log-probability of its target token, and its `top` best alternatives (None without top)."""
    import torch

    index = torch.tensor(targets, dtype=torch.long).unsqueeze(1)
    chosen = [float(value) for value in log_probs.gather(1, index).squeeze(1).tolist()]
    if not top:
        return chosen, [None] * len(chosen)
    values, indices = log_probs.topk(min(top, log_probs.shape[-1]), dim=-1)
    tops: list[dict[int, float] | None] = [
        dict(zip(row_ids, row_values)) for row_ids, row_values in zip(indices.tolist(), values.tolist())
    ]
    return chosen, tops
