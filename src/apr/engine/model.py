"""The transformer as pure PyTorch compute, the reference path: token ids in, logits out (qwen2, llama, gemma3).

No I/O, no native kernels: native_model.py derives the CPU path that runs apr's C kernels from these classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from apr.engine.kv_cache import SequenceCache
from apr.formats.config import ModelConfig

if TYPE_CHECKING:
    from apr.engine.weights import BlockRows


class RMSNorm(nn.Module):
    """RMSNorm in Hugging Face numerics: llama style ``w * norm(x).to(dtype)``, gemma style ``norm(x) * (1 + w)``."""

    def __init__(self, weight: torch.Tensor, eps: float, offset: float) -> None:
        super().__init__()
        self.eps, self.offset = eps, offset
        if offset:
            self.register_buffer("scale", weight.float() + offset)
        else:
            self.register_buffer("scale", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (normed * self.scale).to(x.dtype)
        return self.scale * normed.to(x.dtype)


def rope_tables(head_dim: int, theta: float, positions: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[positions, head_dim]`` in float32, halves duplicated (neox rotation), as HF builds them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv_freq = inv_freq / scaling
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``[T, heads, d]``; cos/sin ``[T, d]`` already in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def attend_one(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of one new token: q ``[kv_heads, rep, d]`` over keys/values ``[kv_heads, capacity, d]``.

    ``bias`` ``[1, 1, capacity]`` is 0 where the token may look and -inf elsewhere. Three plain kernels
    instead of scaled_dot_product_attention, whose flash path costs ~130 us a call for one query row."""
    scores = torch.baddbmm(bias, q, keys.transpose(1, 2), alpha=scale)
    return torch.bmm(torch.softmax(scores, dim=-1), values)


def mask_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``[..., capacity]`` mask -> additive ``[1, 1, capacity]`` bias (0 allowed, -inf not)."""
    bias = torch.zeros(allowed.shape[-1], dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed.reshape(-1), float("-inf")).view(1, 1, -1)


class Block(nn.Module):
    """One decoder layer: (sandwich-)normed attention and gated MLP with residuals."""

    norm_class: type[RMSNorm] = RMSNorm  # native_model.NativeBlock swaps in its fused norm

    def __init__(
        self, cfg: ModelConfig, index: int, linears: dict[str, nn.Module], norms: dict[str, torch.Tensor]
    ) -> None:
        super().__init__()
        self.index = index
        self.sliding = cfg.layer_kinds[index] == "sliding"
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        self.gelu = cfg.hidden_activation == "gelu_tanh"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            self.add_module(name, linears[name])

        def optional(name: str) -> RMSNorm | None:
            weight = norms.get(name)
            return None if weight is None else self.norm_class(weight, cfg.rms_norm_eps, cfg.norm_weight_offset)

        def required(name: str) -> RMSNorm:
            found = optional(name)
            if found is None:  # the loader checks the checkpoint first; this guards direct construction
                raise ValueError(f"layer {index} has no {name} weight")
            return found

        self.input_norm = required("input_layernorm")
        self.sandwich = "pre_feedforward_layernorm" in norms  # gemma3: norms after attention and MLP too
        if self.sandwich:
            self.post_attn_norm = required("post_attention_layernorm")
            self.pre_mlp_norm = required("pre_feedforward_layernorm")
            self.post_mlp_norm = required("post_feedforward_layernorm")
        else:
            self.pre_mlp_norm = required("post_attention_layernorm")
        self.q_norm = optional("q_norm")
        self.k_norm = optional("k_norm")

    def qkv(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: bool):
        """Projections of h ``[T, hidden]`` into roped q ``[T, heads, d]`` and k, v ``[T, kv_heads, d]``."""
        t = h.shape[0]
        proj = (lambda layer, x: layer.forward_rows(x)) if rows else (lambda layer, x: layer(x))
        q = proj(self.q_proj, h).view(t, self.heads, self.head_dim)
        k = proj(self.k_proj, h).view(t, self.kv_heads, self.head_dim)
        v = proj(self.v_proj, h).view(t, self.kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin), v

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, cos, sin)

    def mlp(self, h: torch.Tensor, rows: bool) -> torch.Tensor:
        proj = (lambda layer, x: layer.forward_rows(x)) if rows else (lambda layer, x: layer(x))
        gate = proj(self.gate_proj, h)
        gate = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
        return proj(self.down_proj, gate * proj(self.up_proj, h))

    def finish(self, x: torch.Tensor, attn: torch.Tensor, rows: bool) -> torch.Tensor:
        """Output projection, residuals and MLP, given the attention result ``[T, heads*d]``."""
        out = self.o_proj.forward_rows(attn) if rows else self.o_proj(attn)
        if self.sandwich:
            x = x + self.post_attn_norm(out)
            return x + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(x), rows))
        x = x + out
        return x + self.mlp(self.pre_mlp_norm(x), rows)


class Transformer(nn.Module):
    """Decoder-only transformer. ``prefill`` runs a whole prompt, ``decode`` one new token for several sequences."""

    def __init__(
        self,
        cfg: ModelConfig,
        embedding: torch.Tensor | BlockRows,
        blocks: list[Block],
        final_norm: torch.Tensor,
        lm_head: nn.Module,
        max_positions: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if isinstance(embedding, torch.Tensor):
            self.register_buffer("embedding", embedding)
        else:
            self.embedding = embedding  # rows dequantized from stored blocks on lookup (weights.BlockRows)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = blocks[0].norm_class(final_norm, cfg.rms_norm_eps, cfg.norm_weight_offset)
        self.lm_head = lm_head
        self.dtype = embedding.dtype if embedding.dtype.is_floating_point else torch.float32
        device = embedding.device
        cos, sin = rope_tables(cfg.head_dim, cfg.rope_theta, max_positions, cfg.rope_scaling_factor)
        self.register_buffer("cos_global", cos.to(device))
        self.register_buffer("sin_global", sin.to(device))
        local_theta = cfg.rope_local_theta or cfg.rope_theta
        cos_l, sin_l = rope_tables(cfg.head_dim, local_theta, max_positions, 1.0)
        self.register_buffer("cos_local", cos_l.to(device))
        self.register_buffer("sin_local", sin_l.to(device))
        self.embed_scale = cfg.embedding_multiplier

    @property
    def max_positions(self) -> int:
        return self.cos_global.shape[0]

    @property
    def kv_cache_dtype(self) -> torch.dtype:
        """The element type of the caches new_cache allocates (the activations' here; see NativeTransformer)."""
        return self.dtype

    def new_cache(self, capacity: int) -> SequenceCache:
        """A private zeroed KV cache of ``capacity`` positions for one sequence of this model, on its device."""
        cfg = self.cfg
        return SequenceCache(
            cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, capacity, self.kv_cache_dtype, self.cos_global.device
        )

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding[ids]
        if self.embed_scale != 1.0:
            # HF casts the multiplier to the activation dtype first (bf16 rounds sqrt(640) to 25.25).
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        return x

    def rope(self, block: Block, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = (self.cos_local, self.sin_local) if block.sliding else (self.cos_global, self.sin_global)
        return cos[positions].to(self.dtype), sin[positions].to(self.dtype)

    def rope_tables_at(self, positions: torch.Tensor) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        """cos/sin at ``positions`` keyed by ``block.sliding``, gathered once per step instead of per layer."""
        tables = {False: (self.cos_global, self.sin_global), True: (self.cos_local, self.sin_local)}
        used = {block.sliding for block in self.blocks}
        return {
            sliding: (cos[positions].to(self.dtype), sin[positions].to(self.dtype))
            for sliding, (cos, sin) in tables.items()
            if sliding in used
        }

    def head(self, hidden: torch.Tensor, rows: bool = False) -> torch.Tensor:
        """Logits ``[T, vocab]`` in float32 from final hidden states."""
        h = self.final_norm(hidden)
        logits = (self.lm_head.forward_rows(h) if rows else self.lm_head(h)).float()
        cap = self.cfg.final_logit_softcapping
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def can_continue_prefill(self, tokens: int) -> bool:
        """Whether a kept cache should be continued with ``tokens`` more tokens (prefix caching): this path
        re-reads the whole cache per call, so only native_model.NativeTransformer's one-call layers say yes."""
        return False

    def prefill(self, ids: torch.Tensor, cache: SequenceCache | None) -> torch.Tensor:
        """Final hidden states ``[T, hidden]`` of prompt tokens placed after the ``cache.length`` positions
        ``cache`` already holds (0 without a cache); fills ``cache`` if given. A prompt prefilled in chunks
        (serve interleaves long prompts with decode steps) continues from the cache; ``can_continue_prefill``
        says whether that is worth it for reusing a kept cache (prefix caching)."""
        t, start = ids.shape[0], cache.length if cache is not None else 0
        end = start + t
        positions = torch.arange(start, end, device=ids.device)
        x = self.embed(ids)
        # Row i (position start + i) sees the cached positions and itself: columns 0 .. start + i.
        causal = torch.ones(t, end, dtype=torch.bool, device=ids.device).tril(start)
        window = self.cfg.sliding_window
        local = causal.triu(start - (window - 1)) if window else causal
        tables = self.rope_tables_at(positions)
        for block in self.blocks:
            cos, sin = tables[block.sliding]
            q, k, v = block.qkv(block.input_norm(x), cos, sin, rows=False)
            keys, values = k.transpose(0, 1), v.transpose(0, 1)
            if cache is not None:
                cache.k[block.index, :, start:end] = keys
                cache.v[block.index, :, start:end] = values
                if start:  # the earlier chunks' keys and values come from the cache
                    keys, values = cache.k[block.index, :, :end], cache.v[block.index, :, :end]
            mask = local if block.sliding else causal
            attn = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None],
                keys[None],
                values[None],
                attn_mask=mask,
                scale=block.scale,
                enable_gqa=True,
            )
            x = block.finish(x, attn[0].transpose(0, 1).reshape(t, -1), rows=False)
        if cache is not None:
            cache.length = end
        return x

    def decode(self, tokens: torch.Tensor, caches: list[SequenceCache]) -> torch.Tensor:
        """Logits ``[B, vocab]`` for one new token per sequence; each row only ever touches its own cache.

        Every row attends over its own cache only (the whole zeroed, masked buffer), and matmuls run with
        row-independent kernels, so a row's numbers do not depend on its batch mates. They also equal
        ``decode_one``'s, which needs static shapes for torch.compile.
        """
        logits = self.decode_at(tokens, caches, [c.length for c in caches])
        for cache in caches:
            cache.length += 1
        return logits

    def decode_at(self, tokens: torch.Tensor, caches: list[SequenceCache], positions: list[int]) -> torch.Tensor:
        """Logits ``[R, vocab]`` of R rows, row r feeding ``tokens[r]`` at ``positions[r]`` of ``caches[r]``;
        cache lengths are left to the caller.

        A cache may take several rows at consecutive positions, in order (a drafted span that lookup
        decoding verifies, lookup.py): each row writes its key/value before it attends, over its cache up
        to its own position, so row r sees the rows before it as a decode step would. Every row goes
        through exactly the operations of a one-token ``decode`` step at its position (row-independent
        products, attention of one query over the masked cache), which is what makes a verified span's
        tokens those that plain greedy decoding picks."""
        x = self.embed(tokens)
        masks = [self._decode_masks(cache, pos) for cache, pos in zip(caches, positions)]
        rep = self.cfg.num_heads // self.cfg.num_kv_heads
        tables = self.rope_tables_at(torch.tensor(positions, device=tokens.device))
        for block in self.blocks:
            cos, sin = tables[block.sliding]
            q, k, v = block.qkv(block.input_norm(x), cos, sin, rows=True)
            outs = []
            for row, (cache, pos) in enumerate(zip(caches, positions)):
                keys, values = cache.k[block.index], cache.v[block.index]
                keys[:, pos] = k[row]
                values[:, pos] = v[row]
                # GQA without copying the cache: the `rep` query heads sharing a kv head become query rows.
                qr = q[row].view(self.cfg.num_kv_heads, rep, self.cfg.head_dim)
                out = attend_one(qr, keys, values, masks[row][1 if block.sliding else 0], block.scale)
                outs.append(out.reshape(1, -1))
            x = block.finish(x, torch.cat(outs), rows=True)
        return self.head(x, rows=True)

    def decode_one(
        self, token: torch.Tensor, pos: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor
    ) -> torch.Tensor:
        """``decode`` for a single sequence in tensor-only form (position as a tensor), for torch.compile.

        Writes the new key/value at ``pos`` of ``k_all``/``v_all`` (``[layers, kv_heads, capacity, d]``)
        and returns logits ``[1, vocab]``; the caller advances the cache length."""
        index = torch.arange(k_all.shape[2], device=k_all.device)
        allowed = index <= pos
        window = self.cfg.sliding_window
        full = mask_bias(allowed, k_all.dtype)
        local = mask_bias(allowed & (index > pos - window), k_all.dtype) if window else full
        kv_heads, head_dim = self.cfg.num_kv_heads, self.cfg.head_dim
        rep = self.cfg.num_heads // kv_heads
        x = self.embed(token)
        for block in self.blocks:
            cos, sin = self.rope(block, pos)
            q, k, v = block.qkv(block.input_norm(x), cos, sin, rows=True)
            keys, values = k_all[block.index], v_all[block.index]
            keys.index_copy_(1, pos, k.transpose(0, 1))
            values.index_copy_(1, pos, v.transpose(0, 1))
            out = attend_one(
                q[0].view(kv_heads, rep, head_dim), keys, values, local if block.sliding else full, block.scale
            )
            x = block.finish(x, out.reshape(1, -1), rows=True)
        return self.head(x, rows=True)

    def decode_slots(self, args: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, span: int) -> torch.Tensor:
        """``decode`` in tensor-only form over a pool of caches, for CUDA graph capture (cuda_graphs.py).

        ``args`` ``[3, B]`` holds each row's token, position and slot; row b's keys and values are
        ``k_pool[slot]`` / ``v_pool[slot]`` (pools ``[slots, layers, kv_heads, capacity, d]``). Each row writes
        its new key/value at its position and attends over the first ``span`` positions of its own slot,
        masked past its position (and outside the window on sliding layers), so rows never see each other.
        Returns logits ``[B, vocab]``; the caller advances the cache lengths. Only shape-static operations
        (no host reads of device values), so the whole step can be captured once per (B, span)."""
        tokens, positions, slots = args[0], args[1], args[2]
        rows = tokens.shape[0]
        kv_heads, head_dim = self.cfg.num_kv_heads, self.cfg.head_dim
        rep = self.cfg.num_heads // kv_heads
        index = torch.arange(span, device=args.device)
        full = torch.zeros(rows, span, dtype=k_pool.dtype, device=args.device)
        full = full.masked_fill(index[None, :] > positions[:, None], float("-inf"))
        window = self.cfg.sliding_window
        local = full.masked_fill(index[None, :] <= positions[:, None] - window, float("-inf")) if window else full
        # [rows * kv_heads, 1, span]: one bias row per (sequence, kv head), shared by its `rep` query heads.
        biases = {
            sliding: bias[:, None, None].expand(rows, kv_heads, 1, span).reshape(rows * kv_heads, 1, span)
            for sliding, bias in ((False, full), (True, local))
        }
        x = self.embed(tokens)
        tables = self.rope_tables_at(positions)
        for block in self.blocks:
            cos, sin = tables[block.sliding]
            q, k, v = block.qkv(block.input_norm(x), cos, sin, rows=False)
            layer_k, layer_v = k_pool[:, block.index, :, :span], v_pool[:, block.index, :, :span]
            # Seen as [slots, span, kv_heads, d], (slot, position) pairs index the row each new key goes to.
            layer_k.transpose(1, 2).index_put_((slots, positions), k)
            layer_v.transpose(1, 2).index_put_((slots, positions), v)
            keys = layer_k.index_select(0, slots).reshape(rows * kv_heads, span, head_dim)
            values = layer_v.index_select(0, slots).reshape(rows * kv_heads, span, head_dim)
            qr = q.reshape(rows * kv_heads, rep, head_dim)
            out = attend_one(qr, keys, values, biases[block.sliding], block.scale)
            x = block.finish(x, out.reshape(rows, -1), rows=False)
        return self.head(x)

    def _decode_masks(self, cache: SequenceCache, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive attention biases over the cache for the token at position ``pos``: (global, sliding)."""
        index = torch.arange(cache.capacity, device=cache.k.device)
        allowed = index <= pos
        window = self.cfg.sliding_window
        full = mask_bias(allowed, cache.k.dtype)
        return full, mask_bias(allowed & (index > pos - window), cache.k.dtype) if window else full

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[T, vocab]`` of a whole sequence without a cache."""
        return self.head(self.prefill(ids, None))
