"""Next-token choice from logits: greedy, or seeded sampling with temperature, top-k, top-p, repetition penalty."""

from __future__ import annotations

from typing import Protocol

import torch

from apr.engine.types import SamplingParams
from apr.errors import AprError


class NonFiniteLogits(AprError):
    """The model computed NaN or +Inf logits: its weights (or its numerics) are broken, never a valid reply."""


class LogitConstraint(Protocol):
    """A per-sequence restriction of the next token (a grammar): masks logits, then learns the choice."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """float32 ``[vocab]`` logits with every forbidden token at -inf."""
        ...

    def accept(self, token: int) -> None: ...


class Sampler:
    """Picks tokens for one request; owns that request's seeded generator so batch mates never share a stream."""

    def __init__(self, params: SamplingParams, constraint: LogitConstraint | None = None) -> None:
        self.params = params
        self.constraint = constraint
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(params.effective_seed)

    def choose(
        self, logits: torch.Tensor, history: list[int], draft: int | None = None
    ) -> tuple[int, float, dict[int, float] | None]:
        """(token id, its log-probability, top alternatives or None) from float32 logits ``[vocab]``.

        ``draft``: the token lookup decoding proposed here. Greedy ignores it (argmax is argmax); sampling
        keeps it with probability p(draft) and otherwise draws from p without it, which is speculative
        sampling with a draft that is certain of its token: the chosen token is still distributed as p,
        though the generator's draws differ from a run without drafts."""
        logits = logits.float().cpu()
        if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):
            raise NonFiniteLogits(
                "the model computed NaN/Inf logits: its weights hold NaN or Inf values (or overflow in this "
                "dtype); the checkpoint is corrupt, re-convert or re-download it"
            )
        p = self.params
        if p.repetition_penalty != 1.0 and history:
            logits = apply_repetition_penalty(logits, history, p.repetition_penalty)
        if self.constraint is not None:
            # Masked before the softmax, so reported logprobs are those of the constrained distribution.
            logits = self.constraint.mask(logits)
        logprobs = torch.log_softmax(logits, dim=-1)
        if p.greedy:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(filter_logits(scaled(logits, p.temperature), p.top_k, p.top_p), dim=-1)
            token = self._sample(probs, draft)
        if self.constraint is not None:
            self.constraint.accept(token)
        top = None
        if p.logprobs:
            values, ids = torch.topk(logprobs, min(p.logprobs, logprobs.shape[-1]))
            top = {int(i): float(v) for i, v in zip(ids, values)}
        return token, float(logprobs[token]), top

    def _sample(self, probs: torch.Tensor, draft: int | None) -> int:
        if draft is None:
            return int(torch.multinomial(probs, 1, generator=self.generator))
        # Accept with probability min(1, p(d) / q(d)), q(d) = 1; on rejection the residual max(0, p - q)
        # normalised is p with d removed: P(d) = p(d), P(x) = (1 - p(d)) p(x) / (1 - p(d)) = p(x).
        kept = float(probs[draft])
        if float(torch.rand((), generator=self.generator)) < kept:
            return draft
        residual = probs.clone()
        residual[draft] = 0.0
        if not float(residual.sum()) > 0.0:  # p(d) rounded to 1: nothing else can be drawn
            return draft
        return int(torch.multinomial(residual, 1, generator=self.generator))


def scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` shifted so the best is 0: a tiny temperature then sends the others to -inf
    instead of overflowing to +inf (whose softmax is NaN)."""
    return (logits - logits.max()) / temperature


def apply_repetition_penalty(logits: torch.Tensor, history: list[int], penalty: float) -> torch.Tensor:
    """CTRL-style penalty as in transformers: seen tokens' positive logits divided, negative multiplied."""
    seen = torch.tensor(sorted(set(history)), dtype=torch.long)
    picked = logits[seen]
    out = logits.clone()
    out[seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
    # A penalty near 0 overflows the division: the largest finite value keeps the softmax defined.
    return out.clamp(max=torch.finfo(out.dtype).max)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf (always keeps the best)."""
    out = logits.clone()
    if top_k and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p.
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        # The best token always stays, also when top_p rounds to 0 in float32.
        drop[0] = False
        out[order[drop]] = float("-inf")
    return out
