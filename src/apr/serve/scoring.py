"""Log-probabilities of the prompt's own tokens, for `echo` + `logprobs` (lm-eval log-likelihood scoring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = torch.tensor(prompt_ids[1:], dtype=torch.long).unsqueeze(1)
    chosen = log_probs.gather(1, targets).squeeze(1).tolist()
    values, indices = log_probs.topk(min(top, log_probs.shape[-1]), dim=-1)
    tops = [dict(zip(row_ids, row_values)) for row_ids, row_values in zip(indices.tolist(), values.tolist())]
    return PromptScores(logprobs=[None, *chosen], top_logprobs=[None, *tops])
