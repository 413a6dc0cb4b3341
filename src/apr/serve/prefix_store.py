"""The serve prefix cache: KV caches that finished requests leave behind, reused by longest common prefix.

Owned by the scheduler thread (caches are engine state). A request is lent the entry whose token ids share
the longest prefix with its prompt (engine.batch.PrefixCache: the engine prefills only the rest and leaves
the request's own cache there when it ends); with no useful entry it gets a fresh one, which becomes a new
entry. Entries lent out are never evicted; the rest go least recently used first once the caches hold more
than the byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apr.engine.batch import PrefixCache

# Below this many shared tokens a reuse saves less than the bookkeeping; the request starts a new entry.
MIN_SHARED_TOKENS = 4


def shared_prefix(left: list[int], right: list[int]) -> int:
    limit = min(len(left), len(right))
    shared = 0
    while shared < limit and left[shared] == right[shared]:
        shared += 1
    return shared


class PrefixStore:
    def __init__(self, budget_bytes: int) -> None:
        self._budget = budget_bytes
        self._entries: OrderedDict[int, PrefixCache] = OrderedDict()
        self._next = 0

    def lease(self, prompt_ids: list[int], busy: set[int]) -> tuple[int, PrefixCache]:
        """(key, entry): the idle entry sharing the longest prefix with `prompt_ids`, or a new empty one.
        `busy`: keys lent to requests still running."""
        from apr.engine.batch import PrefixCache

        best_key, best = None, 0
        for key, entry in self._entries.items():
            if key in busy or entry.cache is None:
                continue
            shared = shared_prefix(entry.ids, prompt_ids)
            if shared > best:
                best_key, best = key, shared
        if best_key is not None and best >= MIN_SHARED_TOKENS:
            self._entries.move_to_end(best_key)
            return best_key, self._entries[best_key]
        key, self._next = self._next, self._next + 1
        self._entries[key] = PrefixCache()
        return key, self._entries[key]

    @property
    def nbytes(self) -> int:
        return sum(entry.cache.nbytes for entry in self._entries.values() if entry.cache is not None)

    def trim(self, busy: set[int]) -> None:
        """Drop idle entries, oldest first, until the budget holds; `busy`: keys lent out now."""
        for key in list(self._entries):
            entry = self._entries[key]
            if key not in busy and entry.cache is None:
                del self._entries[key]  # its request ended without leaving a cache (cancelled or failed)
        total = self.nbytes
        for key in list(self._entries):
            if total <= self._budget:
                return
            entry = self._entries[key]
            if key in busy or entry.cache is None:
                continue
            total -= entry.cache.nbytes
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
