"""Decode on CUDA replayed from captured CUDA graphs: one launch a step instead of ~15 kernel launches a layer."""

from __future__ import annotations

import sys
import threading
import weakref

import torch

from apr.engine.kv_cache import SequenceCache
from apr.engine.model import Transformer

# Batches are padded to a multiple of this many rows, so one sequence decoded alone and the same sequence
# in a batch of up to 8 run the same matrix kernels (cuBLAS picks kernels by shape) and get the same numbers.
ROW_GRANULE = 8
# Attention spans are powers of two from this many positions up to the pool's capacity: few graphs, and a
# step reads keys only up to the bucket of its longest sequence.
MIN_SPAN = 256
DEFAULT_SLOTS = 16


class CachePool:
    """Key/value caches of up to ``slots`` sequences in two tensors, so captured graphs read them at fixed
    addresses; one extra slot takes the writes of padding rows. A slot returns to the pool when the
    ``SequenceCache`` holding it is garbage-collected (a finished request, a chat prefix replaced)."""

    def __init__(self, model: Transformer, slots: int, capacity: int) -> None:
        cfg = model.cfg
        shape = (slots + 1, cfg.num_layers, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=model.dtype, device=model.embedding.device)
        self.v = torch.zeros(shape, dtype=model.dtype, device=model.embedding.device)
        self.scratch = slots
        self.capacity = capacity
        self._free = list(range(slots - 1, -1, -1))
        self._lock = threading.Lock()  # finalizers may run on any thread (the server's event loop, a worker)

    @property
    def free(self) -> int:
        return len(self._free)

    def acquire(self, capacity: int) -> SequenceCache | None:
        """A zeroed cache of ``capacity`` positions in a free slot, or None when every slot is taken."""
        if capacity > self.capacity:
            return None
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
        # Zeroed like a private cache: masked positions then hold zeros, never a former sequence's values.
        self.k[slot].zero_()
        self.v[slot].zero_()
        cache = SequenceCache.from_buffers(self.k[slot, :, :, :capacity], self.v[slot, :, :, :capacity], slot)
        weakref.finalize(cache, self._release, slot)
        return cache

    def _release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


class _Captured:
    """One captured decode step for ``rows`` rows attending over ``span`` positions."""

    def __init__(self, graph: torch.cuda.CUDAGraph, args: torch.Tensor, logits: torch.Tensor) -> None:
        self.graph, self.args, self.logits = graph, args, logits


class GraphDecode:
    """The engine's decode step on CUDA: batches whose caches all live in the pool replay a captured graph;
    anything else (a private cache, more rows than slots) runs the eager ``Transformer.decode``.

    If capturing fails it says so on stderr once and stays eager."""

    def __init__(self, model: Transformer, slots: int = DEFAULT_SLOTS) -> None:
        self.model = model
        self.slots = slots
        self.pool: CachePool | None = None
        self._graphs: dict[tuple[int, int], _Captured] = {}
        self._memory = torch.cuda.graph_pool_handle()
        self.failed: str | None = None

    @property
    def state(self) -> str:
        if self.failed:
            return f"eager (CUDA graph capture failed: {self.failed})"
        return f"cuda graphs (decode, up to {self.slots} sequences, {len(self._graphs)} captured)"

    def new_cache(self, capacity: int) -> SequenceCache:
        """A cache for a new sequence: a pool slot when one is free, else a private cache (decoded eagerly)."""
        if self.pool is None:
            self.pool = CachePool(self.model, self.slots, self.model.max_positions)
        cache = self.pool.acquire(capacity) if not self.failed else None
        return cache if cache is not None else self.model.new_cache(capacity)

    def __call__(self, tokens: torch.Tensor, caches: list[SequenceCache]) -> torch.Tensor:
        pool = self.pool
        if self.failed or pool is None or any(c.slot is None for c in caches):
            return self.model.decode(tokens, caches)
        rows = -(-len(caches) // ROW_GRANULE) * ROW_GRANULE
        span = MIN_SPAN
        longest = max(c.length for c in caches) + 1
        while span < longest:
            span *= 2
        span = min(span, pool.capacity)
        with torch.inference_mode():
            try:
                captured = self._graphs.get((rows, span)) or self._capture(rows, span)
            except Exception as err:  # any capture failure: the eager step computes the same thing
                self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                print(
                    f"apr: CUDA graph capture of the decode step failed ({self.failed}); decoding eagerly",
                    file=sys.stderr,
                )
                return self.model.decode(tokens, caches)
            # Padding rows: token 0 at position 0 of the scratch slot.
            host = torch.zeros(2, rows, dtype=torch.long)
            host[1].fill_(pool.scratch)
            host[0, : len(caches)] = torch.tensor([c.length for c in caches])
            host[1, : len(caches)] = torch.tensor([c.slot for c in caches])
            captured.args[0].zero_()
            captured.args[0, : len(caches)].copy_(tokens.reshape(-1))
            captured.args[1:].copy_(host, non_blocking=True)
            captured.graph.replay()
            logits = captured.logits[: len(caches)].clone()
        for cache in caches:
            cache.length += 1
        return logits

    def _capture(self, rows: int, span: int) -> _Captured:
        pool = self.pool
        assert pool is not None
        args = torch.zeros(3, rows, dtype=torch.long, device=pool.k.device)
        args[2].fill_(pool.scratch)  # warmup and capture write only into the scratch slot
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up cuBLAS and the allocator outside the capture
                self.model.decode_slots(args, pool.k, pool.v, span)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._memory):
            logits = self.model.decode_slots(args, pool.k, pool.v, span)
        captured = _Captured(graph, args, logits)
        self._graphs[(rows, span)] = captured
        return captured
