"""The transformer on apr's native CPU kernels: a decode step, or a prompt, runs every layer in one C call.

The same network as model.py (which stays the pure-PyTorch reference); this path differs in where the work
runs, not in what it computes: float32 CPU activations go through native.DecodeStack (norms, RoPE,
attention and the quantized products of every layer, layer.c), and the few PyTorch-level operations left
(the final norm, long prompts) through the fused glue kernels (glue.c) instead of ~40 small operators.
"""

from __future__ import annotations

import torch

from apr.engine import native
from apr.engine.kv_cache import SequenceCache
from apr.engine.model import Block, RMSNorm, Transformer

# A prompt runs through native.DecodeStack in chunks of at most this many rows (its positions, sharing the
# cache; layer.c attends each chunk's rows together, tiled). Chunking changes no number: the products and
# the attention compute every row on its own (each row as a decode step would), so the chunk only bounds
# the activations of one call (~43 KB a row on the 1.5B: ~22 MB at 512).
PREFILL_CHUNK_ROWS = 512


def runs_native(x: torch.Tensor) -> bool:
    """Whether ``x`` can take the native kernels: float32 on the CPU, and not being traced by torch.compile."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and not torch.compiler.is_compiling()


class NativeRMSNorm(RMSNorm):
    """RMSNorm through native.rms_norm where the input allows (the same values in float32; tests compare)."""

    def __init__(self, weight: torch.Tensor, eps: float, offset: float) -> None:
        super().__init__(weight, eps, offset)
        self.native_scale = self.scale.float().contiguous()  # offset already added, as layer.c takes it
        self.glue = True  # False: the PyTorch ops (NativeTransformer.use_native)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.glue and runs_native(x):
            return native.rms_norm(x.contiguous(), self.native_scale, self.eps)
        return super().forward(x)


class NativeBlock(Block):
    """A decoder layer whose norms and RoPE run the glue kernels, and which describes itself to layer.c."""

    norm_class = NativeRMSNorm
    glue = True  # False: the PyTorch ops (NativeTransformer.use_native)

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return native.rope_neox_(x, cos, sin) if self.glue and runs_native(x) else super().rotate(x, cos, sin)

    def decode_layer(self, cfg) -> native.DecodeLayer | None:
        """This layer for native.DecodeLayer, or None when a projection has no native layout (a dense or
        PyTorch-packed matrix): such a model takes the per-operator path."""
        shape = native.LayerShape(
            hidden=cfg.hidden_size,
            heads=cfg.num_heads,
            kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            ffn=cfg.intermediate_size,
            window=(cfg.sliding_window or 0) if self.sliding else 0,
            gelu=self.gelu,
            eps=cfg.rms_norm_eps,
            attn_scale=self.scale,
        )
        projections = {
            "q": self.q_proj,
            "k": self.k_proj,
            "v": self.v_proj,
            "o": self.o_proj,
            "gate": self.gate_proj,
            "up": self.up_proj,
            "down": self.down_proj,
        }
        inputs = {"o": self.heads * self.head_dim, "down": shape.ffn}
        weights = {}
        for name, layer in projections.items():
            kernel = getattr(layer, "native_kernel", None)
            if kernel is None:
                return None
            weights[name] = (kernel, layer.native_bias, inputs.get(name, shape.hidden))
        norms = {
            "input_norm": self.input_norm,
            "pre_mlp_norm": self.pre_mlp_norm,
            "q_norm": self.q_norm,
            "k_norm": self.k_norm,
            "post_attn_norm": getattr(self, "post_attn_norm", None),
            "post_mlp_norm": getattr(self, "post_mlp_norm", None),
        }
        return native.DecodeLayer(
            weights, {name: None if norm is None else norm.native_scale for name, norm in norms.items()}, shape
        )


class NativeTransformer(Transformer):
    """Transformer of NativeBlocks: float32 CPU decode steps and prompts of any length run through
    ``native_stack`` (every layer in one call, a prompt PREFILL_CHUNK_ROWS rows at a time); traced steps and
    models with a projection the kernels cannot hold take Transformer's per-operator path (over the glue
    kernels)."""

    def __init__(
        self, cfg, embedding, blocks: list[Block], final_norm: torch.Tensor, lm_head, max_positions: int
    ) -> None:
        if not all(isinstance(block, NativeBlock) for block in blocks):
            raise TypeError("NativeTransformer takes NativeBlocks")
        super().__init__(cfg, embedding, blocks, final_norm, lm_head, max_positions)
        layers = [block.decode_layer(cfg) for block in blocks]  # type: ignore[attr-defined]
        self._stack = (
            native.DecodeStack(layers, [block.sliding for block in blocks])  # type: ignore[arg-type]
            if all(layer is not None for layer in layers)
            else None
        )
        self.native_stack: native.DecodeStack | None = self._stack
        # The KV cache's type where the one-call layers run. fp16 would halve the bytes attention streams (a 32K
        # context: 0.9 instead of 1.75 GiB on the 1.5B) and the kernels support it, but it is not the default:
        # fast mode's int8 activations amplify its rounding, and on smollm2:135m it flipped two of the
        # certification's greedy replies from right to wrong (2026-12-05; docs/engine.md "KV cache in fp16").
        self.kv_dtype = torch.float32

    def use_native(self, enabled: bool) -> None:
        """False: the per-operator PyTorch ops over the same native products (tests compare the two paths)."""
        for module in self.modules():
            if isinstance(module, (NativeRMSNorm, NativeBlock)):
                module.glue = enabled
        self.native_stack = self._stack if enabled else None

    def _stack_runs(self) -> bool:
        return (
            self.native_stack is not None
            and self.dtype == torch.float32
            and self.cos_global.device.type == "cpu"
            and not torch.compiler.is_compiling()
        )

    @property
    def kv_cache_dtype(self) -> torch.dtype:
        """``kv_dtype`` where the one-call layers run (the only path that reads fp16), else the activations'."""
        return self.kv_dtype if self._stack_runs() else self.dtype

    def _refuse_foreign_caches(self, caches: list[SequenceCache]) -> None:
        """The per-operator path computes in the model's dtype: a cache of another (an fp16 cache made while
        the one-call layers ran) would fail deep in PyTorch; say so in one line instead."""
        for cache in caches:
            if cache.k.dtype != self.dtype:
                raise RuntimeError(
                    f"a {cache.k.dtype} KV cache reaches the per-operator path, which computes in {self.dtype}"
                )

    def can_continue_prefill(self, tokens: int) -> bool:
        """The one-call layers take a prompt from any start position; the per-operator path from 0 only."""
        return tokens > 0 and self._stack_runs()

    def prefill(self, ids: torch.Tensor, cache: SequenceCache | None) -> torch.Tensor:
        """Transformer.prefill through native.DecodeStack: the prompt's positions are the rows of batches
        (chunks of PREFILL_CHUNK_ROWS) that share a cache; row p writes its key/value at p and attends over
        0..p, which is causal attention, since each row's key/value is written before that row attends."""
        t, start = ids.shape[0], cache.length if cache is not None else 0
        if not self._stack_runs():
            self._refuse_foreign_caches([] if cache is None else [cache])
            return super().prefill(ids, cache)
        if start + t > (cache.capacity if cache is not None else self.max_positions):
            raise ValueError(
                f"a prompt of {t} tokens from position {start} does not fit "
                f"{cache.capacity if cache is not None else self.max_positions} positions"
            )
        x = self.embed(ids).contiguous()
        # Whole-sequence logits (no cache given) still need somewhere to keep the keys: a scratch cache.
        target = cache if cache is not None else self.new_cache(t)
        for first in range(0, t, PREFILL_CHUNK_ROWS):
            rows = min(PREFILL_CHUNK_ROWS, t - first)
            at = start + first
            chunk = native.CacheRows([target.k] * rows, [target.v] * rows, list(range(at, at + rows)))
            # In place: a slice of rows of the contiguous x is contiguous.
            self._run_stack(x[first : first + rows], torch.arange(at, at + rows, device=ids.device), chunk)
        if cache is not None:
            cache.length = start + t
        return x

    def decode_at(self, tokens: torch.Tensor, caches: list[SequenceCache], positions: list[int]) -> torch.Tensor:
        """Transformer.decode_at with every layer in one native call (the same kernels as the per-operator
        path; the rows of one cache are the rows of a prefill, computed as decode computes one row)."""
        if not self._stack_runs():
            self._refuse_foreign_caches(caches)
            return super().decode_at(tokens, caches, positions)
        x = self.embed(tokens)
        rows = native.CacheRows([c.k for c in caches], [c.v for c in caches], list(positions))
        x = self._run_stack(x, torch.tensor(positions, device=tokens.device), rows)
        return self.head(x, rows=True)

    def _run_stack(self, x: torch.Tensor, positions: torch.Tensor, rows: native.CacheRows) -> torch.Tensor:
        assert self.native_stack is not None
        x = x.contiguous()
        tables = {
            sliding: (cos.contiguous(), sin.contiguous())
            for sliding, (cos, sin) in self.rope_tables_at(positions).items()
        }
        global_tables = tables[False] if False in tables else tables[True]  # one kind of layer: one table
        self.native_stack(x, rows, global_tables, tables.get(True, global_tables))
        return x
