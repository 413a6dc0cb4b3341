"""torch.compile of the single-sequence decode step, with a persistent cache and an eager fallback that says so."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from apr.engine.kv_cache import SequenceCache
from apr.engine.model import Transformer
from apr.settings import current, export_inductor_cache_dir


def compile_cache_dir() -> Path:
    return current().home / "compile-cache"


class CompiledDecode:
    """Decode step whose single-sequence case runs through torch.compile; batches of several run eagerly.

    If compiling fails (no compiler, an unsupported op), it says so on stderr once and stays eager.
    """

    def __init__(self, transformer: Transformer) -> None:
        export_inductor_cache_dir(compile_cache_dir())
        self.transformer = transformer
        self.compiled = torch.compile(transformer.decode_one)
        self.failed: str | None = None

    def __call__(self, tokens: torch.Tensor, caches: list[SequenceCache]) -> torch.Tensor:
        if len(caches) != 1 or self.failed:
            return self.transformer.decode(tokens, caches)
        cache = caches[0]
        pos = torch.tensor([cache.length], device=tokens.device)
        try:
            logits = self.compiled(tokens, pos, cache.k, cache.v)
        except Exception as err:  # any compile failure: fall back to the (identical) eager computation
            self.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"apr: torch.compile of the decode step failed ({self.failed}); decoding eagerly", file=sys.stderr)
            return self.transformer.decode(tokens, caches)
        cache.length += 1
        return logits

    @property
    def state(self) -> str:
        return f"eager (compile failed: {self.failed})" if self.failed else "torch.compile (decode, batch 1)"


def compile_decode(transformer: Transformer, enabled: bool):
    """(decode step or None for the plain eager one, state string for ``describe``)."""
    if not enabled:
        return None, "eager"
    return CompiledDecode(transformer), "torch.compile (decode, batch 1)"
