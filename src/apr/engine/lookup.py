"""Prompt-lookup drafting: propose the tokens that followed the latest earlier occurrence of the context's end.

Code edits, refactors and quoted answers repeat long spans of their prompt, so the tokens that followed the
last n tokens somewhere earlier are a good guess of what comes next. No second model: the drafts cost a
dictionary lookup, and the engine verifies them in one forward pass with the step's own token (batch.py).
A draft changes the speed only, never a token (see Transformer.decode_at for why the verify rows compute
what decode steps would).
"""

from __future__ import annotations

from apr.engine.types import LookupConfig


class NgramDrafter:
    """One sequence's context (prompt and generated tokens) with, for each n-gram size, the position that
    followed each n-gram's latest occurrence: a lookup is a dictionary probe per size, however long the
    context."""

    def __init__(self, config: LookupConfig, context: list[int]) -> None:
        self.config = config
        self.context: list[int] = []
        # _following[n][gram]: the index right after gram's latest occurrence that is followed by a token.
        self._following: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(config.min_ngram, config.max_ngram + 1)
        }
        # Adaptive draft length: a draft wholly accepted doubles the next one (up to draft_tokens), a rejected
        # one shrinks it to what was accepted plus one, so a run of text that does not repeat its context
        # pays for short drafts only (a verified row costs compute even when the step is memory-bound).
        self.budget = config.draft_tokens
        for token in context:
            self.append(token)

    def append(self, token: int) -> None:
        """Adds the next token of the sequence."""
        context, end = self.context, len(self.context)
        for n, following in self._following.items():
            if end >= n:
                following[tuple(context[end - n : end])] = end
        context.append(token)

    def record(self, drafted: int, accepted: int) -> None:
        """What the last draft achieved: sets the length of the next one."""
        if drafted == 0:
            return
        if accepted == drafted:
            self.budget = min(self.config.draft_tokens, 2 * self.budget)
        else:
            self.budget = accepted + 1

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` (and the adaptive budget) tokens that may come next: what followed the longest
        n-gram of the context's end seen before (its latest occurrence); empty when none is found. A
        continuation that reaches the end of the context continues with its own start, as a repeating
        pattern would."""
        context = self.context
        limit = min(limit, self.budget)
        if limit <= 0:
            return []
        for n in range(self.config.max_ngram, self.config.min_ngram - 1, -1):
            if len(context) <= n:
                continue
            start = self._following[n].get(tuple(context[-n:]))
            if start is None:
                continue
            drafted: list[int] = []
            for i in range(limit):
                source = start + i
                drafted.append(context[source] if source < len(context) else drafted[source - len(context)])
            return drafted
        return []
