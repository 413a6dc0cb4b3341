"""Continuous batching: sequences join and leave between steps; each step yields one token per sequence."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch

from apr.engine.detokenize import DecodesIds, TextTracker
from apr.engine.kv_cache import SequenceCache, capacity_for
from apr.engine.lookup import NgramDrafter
from apr.engine.model import Transformer
from apr.engine.sampling import LogitConstraint, Sampler
from apr.engine.types import FinishReason, LookupConfig, LookupStats, SamplingParams, TokenEvent

T = TypeVar("T")


@dataclass
class PrefixCache:
    """The KV cache a finished request leaves for the next request of the same conversation (``apr chat``).

    ``ids`` are the tokens whose keys and values ``cache`` holds. A request given this object prefills only
    what follows the longest prefix its prompt shares with ``ids`` (moved into a larger cache when the
    conversation has outgrown this one), and leaves its own cache here when it ends (while it runs,
    ``cache`` is None). Where the remainder cannot continue a cache (the model's one-call native layers do
    not apply) the request starts a new one.
    ``reused`` is how many prompt tokens the last request took from the cache. Reusing changes no number:
    each position's keys and values are computed by the same operations whether it was prefilled, decoded
    or continued (the native kernels are batch invariant)."""

    cache: SequenceCache | None = None
    ids: list[int] = field(default_factory=list)
    reused: int = 0

    def clear(self) -> None:
        self.cache, self.ids, self.reused = None, [], 0


@dataclass
class Sequence:
    """Everything the decoder keeps about one request."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sampler: Sampler
    text: TextTracker
    stop_ids: frozenset[int]
    cache: SequenceCache | None = None
    generated: list[int] = field(default_factory=list)
    finished_at: float | None = None
    prefix: PrefixCache | None = None
    # Prompt tokens whose keys and values the cache holds (a long prompt is prefilled over several steps).
    prefilled: int = 0
    # Lookup decoding (BatchDecoder's ``lookup``): the sequence's drafter and what its drafts achieved.
    drafter: NgramDrafter | None = None
    lookup_steps: int = 0
    drafted: int = 0
    accepted: int = 0


@dataclass(frozen=True)
class SequenceFailure:
    """A sequence that raised while it was prefilled, decoded or sampled; it left the batch, the others stay."""

    request_id: str
    error: Exception


class BatchDecoder:
    """Runs up to ``max_batch`` sequences together. Greedy output of a sequence is the same alone or batched:
    every sequence has its own cache, sized only by its own request, and the batched matmul kernels
    compute each row independently.

    ``prefill_chunk`` (serve): at most that many prompt tokens are prefilled per step, so a long prompt
    is taken in chunks between decode steps and the other sequences keep producing tokens meanwhile.
    ``isolate_failures`` (serve): a sequence that raises leaves the batch alone (``take_failures``)
    instead of failing the step for every sequence.
    ``lookup``: prompt-lookup decoding (lookup.py). Each step, every sequence whose context's end was seen
    before drafts what followed it; the drafted rows join the step's forward pass (Transformer.decode_at),
    and each sequence keeps its draft up to the first token its own choice disagrees with, plus that
    choice: several tokens a step for one weight pass. Rejected rows are rolled back by the cache length
    (their keys and values stay past it, masked, and are overwritten before anything reads them). Only
    for a model called eagerly (no ``step_hook``): a compiled or graph-replayed step computes other bits
    than the eager rows that verify (Engine.lookup_unavailable)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: DecodesIds,
        eos_ids: tuple[int, ...],
        max_batch: int,
        step_hook=None,
        cache_factory: Callable[[int], SequenceCache] | None = None,
        prefill_chunk: int | None = None,
        isolate_failures: bool = False,
        lookup: LookupConfig | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if lookup is not None and step_hook is not None:
            raise ValueError("lookup decoding verifies on the model's own eager decode rows; drop the step hook")
        self.lookup = lookup
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.eos_ids = frozenset(eos_ids)
        self.prefill_chunk, self.isolate_failures = prefill_chunk, isolate_failures
        self._pending: list[Sequence] = []
        self._prefilling: list[Sequence] = []
        self._running: list[Sequence] = []
        self._failures: list[SequenceFailure] = []
        self._decode = step_hook or model.decode
        # The CUDA graph step hands out caches from its pool (cuda_graphs.CachePool); else private ones.
        self._new_cache = cache_factory or model.new_cache

    @property
    def active(self) -> list[str]:
        """Request ids still generating or waiting to start."""
        return [s.request_id for s in (*self._running, *self._prefilling, *self._pending)]

    def take_failures(self) -> list[SequenceFailure]:
        """The sequences that failed since the last call (only with ``isolate_failures``)."""
        failures, self._failures = self._failures, []
        return failures

    def add(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        prefix: PrefixCache | None = None,
        constraint: LogitConstraint | None = None,
    ) -> None:
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        if request_id in self.active:
            raise ValueError(f"request {request_id!r} is already in the batch")
        vocab = self.model.cfg.vocab_size
        if any(not 0 <= i < vocab for i in prompt_ids):
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        limit = self.model.max_positions
        if len(prompt_ids) >= limit:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this engine holds at most {limit - 1}")
        self._pending.append(
            Sequence(
                request_id,
                list(prompt_ids),
                params,
                Sampler(params, constraint),
                TextTracker(self.tokenizer, params.stop),
                self.eos_ids | frozenset(params.stop_token_ids),
                prefix=prefix,
                drafter=None if self.lookup is None else NgramDrafter(self.lookup, prompt_ids),
            )
        )

    def cancel(self, request_id: str) -> None:
        self._pending = [s for s in self._pending if s.request_id != request_id]
        self._prefilling = [s for s in self._prefilling if s.request_id != request_id]
        self._running = [s for s in self._running if s.request_id != request_id]

    @torch.inference_mode()
    def step(self) -> list[TokenEvent]:
        """Prefill newly added sequences (their first token; a chunk of a long prompt) and decode one token
        for the others."""
        events: list[TokenEvent] = []
        decoding = list(self._running)
        while self._pending and len(self._running) + len(self._prefilling) < self.max_batch:
            self._prefilling.append(self._pending.pop(0))
        budget = self.prefill_chunk
        for seq in list(self._prefilling):
            if budget is not None and budget <= 0:
                break
            before = seq.prefilled
            event = self._guarded(seq, self._prefill, seq, budget)
            if budget is not None:
                budget -= max(seq.prefilled - before, 1)
            if event is not None or seq.finished_at is not None:
                self._prefilling.remove(seq)
                self._running.append(seq)
                if event is not None:
                    events.append(event)
        if decoding:
            events.extend(self._decode_all(decoding))
        self._running = [s for s in self._running if s.finished_at is None]
        return events

    def _decode_all(self, decoding: list[Sequence]) -> list[TokenEvent]:
        if self.lookup is not None:
            return self._decode_drafted(decoding)
        device = self.model.embedding.device
        try:
            tokens = torch.tensor([s.generated[-1] for s in decoding], device=device)
            logits = self._decode(tokens, [_cache_of(s) for s in decoding])
        except Exception:
            if not self.isolate_failures:
                raise
            return self._decode_each_alone(decoding)
        events = []
        for seq, row in zip(decoding, logits):
            event = self._guarded(seq, self._advance, seq, row)
            if event is not None:
                events.append(event)
        return events

    def _decode_drafted(self, decoding: list[Sequence]) -> list[TokenEvent]:
        """One forward pass over every sequence's last token and its draft; each keeps what it accepts."""
        assert self.lookup is not None
        # A step of several sequences already shares its weight pass, and each drafted row adds compute: the
        # sequences split one sequence's draft length between them.
        share = -(-self.lookup.draft_tokens // len(decoding))
        drafts = [self._draft(seq, share) for seq in decoding]
        tokens: list[int] = []
        caches: list[SequenceCache] = []
        positions: list[int] = []
        for seq, draft in zip(decoding, drafts):
            cache = _cache_of(seq)
            tokens += [seq.generated[-1], *draft]
            caches += [cache] * (1 + len(draft))
            positions += range(cache.length, cache.length + 1 + len(draft))
        try:
            logits = self.model.decode_at(torch.tensor(tokens, device=self.model.embedding.device), caches, positions)
        except Exception:
            if not self.isolate_failures:
                raise
            return self._decode_each_alone(decoding)
        events = []
        first = 0
        for seq, draft in zip(decoding, drafts):
            rows = logits[first : first + 1 + len(draft)]
            first += 1 + len(draft)
            events += self._guarded(seq, self._accept, seq, rows, draft) or []
        return events

    def _decode_each_alone(self, decoding: list[Sequence]) -> list[TokenEvent]:
        """After a batched step failed: each sequence decodes alone and undrafted, so only the one that breaks
        the step fails (each writes only its own cache positions, which the failed step may have written
        already: the same values again)."""
        events = []
        for seq in decoding:
            row = self._guarded(seq, self._decode_one, seq)
            if row is not None:
                if self.lookup is not None:
                    seq.lookup_steps += 1  # a pass of its own, as a drafted step would have been
                event = self._guarded(seq, self._advance, seq, row)
                if event is not None:
                    events.append(event)
        return events

    def _draft(self, seq: Sequence, most: int) -> list[int]:
        """The sequence's draft (at most ``most`` tokens), cut to what it may still generate and what its
        cache still holds."""
        assert seq.drafter is not None
        cache = _cache_of(seq)
        room = min(
            most,
            seq.params.max_tokens - len(seq.generated) - 1,  # the step's own token comes on top
            cache.capacity - cache.length - 1,
        )
        return seq.drafter.draft(room)

    def _accept(self, seq: Sequence, rows: torch.Tensor, draft: list[int]) -> list[TokenEvent]:
        """Tokens of one verified span: row i (fed the last token, then draft[:i]) chooses a token; the span
        goes on while the choice confirms the draft. The cache then holds what was fed up to the last
        row used: the positions of rejected rows are past its length, as if never written."""
        cache = _cache_of(seq)
        start = cache.length
        seq.lookup_steps += 1
        seq.drafted += len(draft)
        events: list[TokenEvent] = []
        accepted = 0
        for i, row in enumerate(rows):
            cache.length = start + i + 1  # what a plain decode step would hold when it chose this token
            proposed = draft[i] if i < len(draft) else None
            event = self._advance(seq, row, proposed)
            events.append(event)
            if proposed is None or event.token_id != proposed:
                break
            accepted += 1
            if event.finish_reason is not None:
                break
        seq.accepted += accepted
        if seq.drafter is not None:
            seq.drafter.record(len(draft), accepted)
        finish = events[-1].finish_reason
        if finish is not None:  # its figures were taken before this span's acceptances were added
            events[-1] = replace(events[-1], lookup=self._lookup_stats(seq, finish))
        return events

    def _decode_one(self, seq: Sequence) -> torch.Tensor:
        tokens = torch.tensor([seq.generated[-1]], device=self.model.embedding.device)
        return self._decode(tokens, [_cache_of(seq)])[0]

    def _guarded(self, seq: Sequence, action: Callable[..., T], *args: Any) -> T | None:
        """``action(*args)``; with ``isolate_failures`` an exception ends ``seq`` alone (None is returned)."""
        if not self.isolate_failures:
            return action(*args)
        try:
            return action(*args)
        except Exception as exc:
            seq.finished_at, seq.cache = time.perf_counter(), None
            self._failures.append(SequenceFailure(seq.request_id, exc))
            return None

    def _prefill(self, seq: Sequence, budget: int | None) -> TokenEvent | None:
        """Prefill the next ``budget`` prompt tokens (all without a budget); the first token once the whole
        prompt is in the cache, else None."""
        if seq.cache is None:
            positions = min(len(seq.prompt_ids) + seq.params.max_tokens, self.model.max_positions)
            seq.prefilled = self._take_prefix(seq, positions)
            if seq.cache is None:
                seq.cache = self._new_cache(capacity_for(positions, self.model.max_positions))
        stop = len(seq.prompt_ids) if budget is None else min(len(seq.prompt_ids), seq.prefilled + budget)
        ids = torch.tensor(seq.prompt_ids[seq.prefilled : stop], device=self.model.embedding.device)
        hidden = self.model.prefill(ids, seq.cache)
        seq.prefilled = stop
        if stop < len(seq.prompt_ids):
            return None
        return self._advance(seq, self.model.head(hidden[-1:])[0])

    def _take_prefix(self, seq: Sequence, positions: int) -> int:
        """Makes the sequence's cache its prefix's, rewound to the shared prompt tokens, when that works;
        returns how many prompt tokens it holds already (0: a new cache)."""
        prefix = seq.prefix
        if prefix is None:
            return 0
        cache, prefix.cache, prefix.reused = prefix.cache, None, 0
        if cache is None:
            return 0
        shared = 0
        limit = min(len(prefix.ids), len(seq.prompt_ids) - 1)  # at least one token to prefill: its logits
        while shared < limit and prefix.ids[shared] == seq.prompt_ids[shared]:
            shared += 1
        if shared == 0 or not self.model.can_continue_prefill(len(seq.prompt_ids) - shared):
            return 0
        if cache.capacity < positions:  # the conversation outgrew it: the shared part moves to a larger one
            larger = self._new_cache(capacity_for(positions, self.model.max_positions))
            larger.k[:, :, :shared] = cache.k[:, :, :shared]
            larger.v[:, :, :shared] = cache.v[:, :, :shared]
            cache = larger
        cache.length = shared  # positions past it are overwritten before anything reads them
        seq.cache, prefix.reused = cache, shared
        return shared

    def _advance(self, seq: Sequence, logits: torch.Tensor, draft: int | None = None) -> TokenEvent:
        cache = _cache_of(seq)
        token, logprob, top = seq.sampler.choose(logits, seq.prompt_ids + seq.generated, draft)
        seq.generated.append(token)
        if seq.drafter is not None:
            seq.drafter.append(token)
        finish: FinishReason | None = None
        text = "" if token in seq.stop_ids else seq.text.add(token)
        if token in seq.stop_ids or seq.text.stopped:
            finish = "stop"
        elif len(seq.generated) >= seq.params.max_tokens or cache.length >= cache.capacity:
            finish = "length"
        if finish is not None:
            text += seq.text.finish()
            seq.finished_at = time.perf_counter()
            if seq.prefix is not None:  # the last token was never fed: the cache holds everything before it
                seq.prefix.cache = cache
                seq.prefix.ids = (seq.prompt_ids + seq.generated)[: cache.length]
            seq.cache = None  # the sequence leaves the batch after this step
        return TokenEvent(seq.request_id, token, text, logprob, top, finish, self._lookup_stats(seq, finish))

    def _lookup_stats(self, seq: Sequence, finish: FinishReason | None) -> LookupStats | None:
        if finish is None or self.lookup is None:
            return None
        return LookupStats(self.lookup.draft_tokens, seq.lookup_steps, seq.drafted, seq.accepted, len(seq.generated))


def _cache_of(seq: Sequence) -> SequenceCache:
    """The cache of a running sequence (set by its prefill, dropped only as it leaves the batch)."""
    if seq.cache is None:
        raise RuntimeError(f"request {seq.request_id!r} is running without a cache")
    return seq.cache
