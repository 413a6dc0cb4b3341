"""Per-sequence key/value cache: a zeroed static buffer per request, so attention never sees another row."""

from __future__ import annotations

import torch

from apr.engine import hugepages

# Capacities are rounded up to this many positions, so the attention length (and with it the
# floating-point reduction order) depends only on the request itself, never on its batch mates.
CAPACITY_STEP = 256


def capacity_for(tokens_needed: int, context_length: int) -> int:
    """Static cache length for a request that may reach ``tokens_needed`` positions."""
    rounded = -(-tokens_needed // CAPACITY_STEP) * CAPACITY_STEP
    return max(1, min(rounded, context_length))


class SequenceCache:
    """Keys and values of one sequence for every layer: ``k``/``v`` are ``[layers, kv_heads, capacity, head_dim]``.

    Zero-initialised: masked positions are multiplied by zero probabilities, and zeros (unlike
    uninitialised memory) cannot turn that into NaN.
    """

    def __init__(
        self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (num_layers, num_kv_heads, capacity, head_dim)
        if device.type == "cpu":  # decode streams the whole live cache every token: huge pages (hugepages.py)
            self.k, self.v = hugepages.zeros(shape, dtype), hugepages.zeros(shape, dtype)
        else:
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.slot: int | None = None  # its row in a CachePool (cuda_graphs.py), None for a private cache

    @classmethod
    def from_buffers(cls, k: torch.Tensor, v: torch.Tensor, slot: int) -> SequenceCache:
        """A cache over given (zeroed) ``[layers, kv_heads, capacity, head_dim]`` views, e.g. one slot of a pool."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.length, cache.slot = k, v, 0, slot
        return cache

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
