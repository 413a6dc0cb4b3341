"""The engine's public face: load a checkpoint onto a device and generate from token ids."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from apr.engine import native
from apr.engine.batch import BatchDecoder, PrefixCache
from apr.engine.device import resolve_device, resolve_kv_cache, resolve_precision, set_threads
from apr.engine.kv_cache import SequenceCache
from apr.engine.loader import LayerProgress, build_transformer, weight_kinds
from apr.engine.model import Transformer
from apr.engine.types import GenerationResult, KvCache, LookupConfig, SamplingParams, Timings, TokenEvent
from apr.engine.weights import WeightPolicy
from apr.errors import AprError
from apr.formats.model import CanonicalModel

# Positions one sequence may use come from the model's metadata (its trained context length: 32768 for
# qwen2.5-coder:1.5b), bounded by POSITIONS_CEILING: RoPE tables are built for every position up front
# (cos and sin, float32, head_dim wide: 128 MiB at 131072 positions and head_dim 128) and a metadata
# context of millions would allocate gigabytes. The KV cache is sized per request (kv_cache.capacity_for),
# never for the whole context: at 32768 positions the 1.5B's float32 cache is 28 layers x 2 kv heads x
# 128 x 4 bytes x 2 (keys, values) = 56 KiB a position, 1.75 GiB in all.
POSITIONS_CEILING = 131072
# CUDA graphs keep the caches of all their sequences in one pool preallocated for the whole context
# (cuda_graphs.CachePool): there the default stays where it was, 8192 positions.
CUDA_GRAPH_POSITIONS = 8192
# logits() returns every row at once: [positions, vocab] float32 is 20 GB for a 32K-token qwen sequence. It is
# refused beyond this many bytes; prompt_logprobs() scores a longer sequence chunk by chunk instead.
MAX_LOGITS_BYTES = 2 << 30
SCORING_CHUNK = 512  # prompt positions scored per chunk when prompt_logprobs() cannot hold every row


class Engine:
    """A loaded model ready to run: ``logits`` for parity checks, ``generate``/``stream`` for one request,
    ``new_batch`` for continuous batching."""

    def __init__(
        self,
        model: CanonicalModel,
        transformer: Transformer,
        policy: WeightPolicy,
        compile_state: str,
        load_s: float,
        decode_step=None,
        pack_state: str = "off",
        kernel_note: str = "",
        numerics: str = "fast",
    ) -> None:
        self.model = model
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.transformer = transformer
        self.device = policy.device
        self.dtype = policy.dtype
        self.policy = policy
        self.compile_state = compile_state
        self.load_s = load_s
        self.pack_state = pack_state
        self.kernel_note = kernel_note
        self.numerics = numerics
        self._decode_step = decode_step
        self._ids = itertools.count()
        eos = set(self.config.eos_token_ids)
        eos.update(getattr(self.tokenizer, "eos_token_ids", ()) or ())
        self.eos_token_ids = tuple(sorted(eos))

    @property
    def max_positions(self) -> int:
        """Most positions (prompt + generated) one sequence may use here: min(context length, engine limit)."""
        return self.transformer.max_positions

    @property
    def decode_step(self):
        """The function that decodes one token for a list of sequences (compiled when compile is on)."""
        return self._decode_step or self.transformer.decode

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.model.source_path),
            "format": self.model.source_format,
            "architecture": self.config.architecture,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "numerics": self.numerics,
            "weights": weight_kinds(self.transformer),
            "kernels": (
                f"apr native {native.describe()}"
                if self.policy.kernels == "native"
                else "torch packed"
                if self.policy.packed
                else "torch dense"
            ),
            **({"kernel_note": self.kernel_note} if self.kernel_note else {}),
            "dense_prefill": self.policy.dense_prefill,
            "compile": getattr(self._decode_step, "state", self.compile_state),
            "weights_cache": self.pack_state,
            "threads": torch.get_num_threads(),
            "max_positions": self.transformer.max_positions,
            # What new caches are allocated as (--kv-cache; the activations' dtype off the native CPU path).
            "kv_cache": str(self.transformer.kv_cache_dtype).removeprefix("torch."),
            "load_s": round(self.load_s, 3),
        }

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """float32 ``[len(ids), vocab]`` logits of the whole sequence, computed without a cache (at most
        ``MAX_LOGITS_BYTES`` of them: a longer sequence is refused, use ``prompt_logprobs``)."""
        self._check_ids(ids)
        if len(ids) * self.config.vocab_size * 4 > MAX_LOGITS_BYTES:
            raise ValueError(
                f"logits of {len(ids)} positions x {self.config.vocab_size} tokens exceed "
                f"{MAX_LOGITS_BYTES >> 20} MiB; score long sequences with prompt_logprobs()"
            )
        return self.transformer(torch.tensor(ids, device=self.device)).float().cpu()

    def prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        """log p(ids[i] | ids[:i]) for every position; the first has no context and is None. A sequence whose
        logits would exceed ``MAX_LOGITS_BYTES`` is prefilled into a private cache ``SCORING_CHUNK`` positions at
        a time, each chunk's rows scored and dropped."""
        self._check_ids(ids)
        if len(ids) * self.config.vocab_size * 4 <= MAX_LOGITS_BYTES:
            logprobs = torch.log_softmax(self.logits(ids)[:-1], dim=-1)
            picked = logprobs.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
            return [None, *(float(x) for x in picked)]
        return [None, *self._chunked_logprobs(ids)]

    @torch.inference_mode()
    def _chunked_logprobs(self, ids: list[int]) -> list[float]:
        cache = self.transformer.new_cache(len(ids))
        scores: list[float] = []
        for start in range(0, len(ids), SCORING_CHUNK):
            stop = min(len(ids), start + SCORING_CHUNK)
            hidden = self.transformer.prefill(torch.tensor(ids[start:stop], device=self.device), cache)
            targets = ids[start + 1 : stop + 1]  # row i predicts token start + i + 1
            if targets:
                logprobs = torch.log_softmax(self.transformer.head(hidden[: len(targets)]).float().cpu(), dim=-1)
                scores.extend(float(x) for x in logprobs.gather(1, torch.tensor(targets)[:, None])[:, 0])
        return scores

    def _check_ids(self, ids: list[int]) -> None:
        if not ids:
            raise ValueError("logits need at least one token id")
        if len(ids) > self.transformer.max_positions:
            raise ValueError(f"{len(ids)} tokens exceed this engine's {self.transformer.max_positions} positions")
        if any(not 0 <= i < self.config.vocab_size for i in ids):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")

    @torch.inference_mode()
    def hidden_states(self, ids: list[int]) -> torch.Tensor:
        """float32 ``[len(ids), hidden]``: the last layer's states after the final norm (what the head reads),
        for embeddings. Uses a private cache, never a CUDA graph pool slot."""
        if not ids or len(ids) >= self.transformer.max_positions:
            raise ValueError(f"hidden_states() needs 1 to {self.transformer.max_positions - 1} token ids")
        if any(not 0 <= i < self.config.vocab_size for i in ids):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")
        cache = self.transformer.new_cache(len(ids))
        hidden = self.transformer.prefill(torch.tensor(ids, device=self.device), cache)
        return self.transformer.final_norm(hidden).float().cpu()

    def new_cache(self, capacity: int) -> SequenceCache:
        """A zeroed KV cache of ``capacity`` positions for one sequence (a CUDA graph pool slot when one is free)."""
        new_cache = getattr(self._decode_step, "new_cache", None)
        if new_cache is not None:
            return new_cache(capacity)
        return self.transformer.new_cache(capacity)

    def lookup_unavailable(self) -> str | None:
        """Why lookup decoding (LookupConfig) cannot run on this engine, or None when it can.

        Its guarantee (greedy output token for token that of plain decoding) rests on the verify rows being
        computed exactly as one-token steps are: true of the eager CPU paths (row-independent products,
        tests/unit/test_engine_lookup.py), not of a compiled step or of GPU products, whose kernels change
        with the number of rows."""
        if self.device.type != "cpu":
            return (
                f"lookup decoding runs on the CPU only ({self.device.type} products are not row-identical to "
                "one-token steps, so greedy output could change)"
            )
        if self._decode_step is not None:
            return "lookup decoding verifies on the eager decode step; it cannot run with --compile"
        return None

    def new_batch(
        self,
        max_batch: int,
        *,
        prefill_chunk: int | None = None,
        isolate_failures: bool = False,
        lookup: LookupConfig | None = None,
    ) -> BatchDecoder:
        """A continuous batch (see BatchDecoder for ``prefill_chunk``, ``isolate_failures`` and ``lookup``;
        ValueError with ``lookup`` where lookup_unavailable says why not)."""
        self._check_lookup(lookup)
        return BatchDecoder(
            self.transformer,
            self.tokenizer,
            self.eos_token_ids,
            max_batch,
            step_hook=self._decode_step,
            cache_factory=self.new_cache,
            prefill_chunk=prefill_chunk,
            isolate_failures=isolate_failures,
            lookup=lookup,
        )

    def _check_lookup(self, lookup: LookupConfig | None) -> None:
        reason = None if lookup is None else self.lookup_unavailable()
        if reason is not None:
            raise ValueError(reason)

    def stream(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        prefix: PrefixCache | None = None,
        lookup: LookupConfig | None = None,
    ) -> Iterator[TokenEvent]:
        """Token events of one request as they are produced; the last one carries ``finish_reason``.

        ``prefix``: the cache an earlier request of the same conversation left (see ``PrefixCache``); this
        request starts from it where its prompt shares a prefix, and leaves its own there. ``lookup``:
        prompt-lookup decoding (several events may then come at once)."""
        self._check_lookup(lookup)
        decoder = BatchDecoder(
            self.transformer,
            self.tokenizer,
            self.eos_token_ids,
            1,
            step_hook=self._decode_step,
            cache_factory=self.new_cache,
            lookup=lookup,
        )
        decoder.add(f"req-{next(self._ids)}", list(prompt_ids), params, prefix)
        while decoder.active:
            yield from decoder.step()

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        prefix: PrefixCache | None = None,
        lookup: LookupConfig | None = None,
    ) -> GenerationResult:
        start = time.perf_counter()
        first_at = None
        events: list[TokenEvent] = []
        for event in self.stream(prompt_ids, params, prefix, lookup):
            if first_at is None:
                first_at = time.perf_counter()
            events.append(event)
        end = time.perf_counter()
        ttft = (first_at or end) - start
        decode_s = end - (first_at or end)
        decoded = len(events) - 1
        timings = Timings(
            ttft_s=ttft,
            prefill_tok_s=len(prompt_ids) / ttft if ttft > 0 else 0.0,
            decode_tok_s=decoded / decode_s if decoded > 0 and decode_s > 0 else 0.0,
            total_s=end - start,
        )
        return GenerationResult(
            token_ids=[e.token_id for e in events],
            text="".join(e.text for e in events),
            finish_reason=events[-1].finish_reason or "length",
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(events),
            timings=timings,
            logprobs=[e.logprob for e in events if e.logprob is not None],
            lookup=events[-1].lookup,
        )


def load_engine(
    model: str | Path | CanonicalModel,
    *,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    threads: int | None = None,
    compile: bool | None = None,
    dense_prefill: bool | None = None,
    max_positions: int | None = None,
    pack_cache: bool = True,
    cuda_graphs: bool = True,
    numerics: str = "fast",
    kv_cache: KvCache = "f32",
    progress: LayerProgress | None = None,
) -> Engine:
    """Load ``model`` (a CanonicalModel, a path to any format, or a model ref) for inference.

    dtype ``auto`` (default) picks apr's native AVX2 kernels on CPU (float32 activations, weights kept
    quantized) when they build here, PyTorch's packed kernels with bf16 otherwise; ``bf16`` forces the
    PyTorch packed kernels; ``fp32`` dequantizes every tensor (the exact reference mode).
    ``pack_cache`` keeps converted weights under
    ``$APR_HOME/engine-cache`` so the next load of the same file skips the conversion. ``compile`` True
    wraps the single-sequence decode step in torch.compile (off by default: the first compile costs tens
    of seconds). ``dense_prefill`` keeps dense bf16 copies of packed matrices for faster prompts.
    ``numerics`` ``exact`` computes like the float32 reference (every tensor dequantized, as ``dtype`` fp32);
    ``fast`` (default) takes the fastest kernels. ``cuda_graphs`` (CUDA only, on by default) replays each decode step from a captured CUDA graph, with the
    KV caches of up to 16 sequences in one pool (cuda_graphs.py). ``kv_cache`` ``f16`` keeps keys and values
    in fp16 (half the cache memory) on apr's native CPU layers; ``f32`` (default) keeps float32 there (other
    paths hold the activations' dtype); AprError before anything loads where f16 cannot run. ``progress(done, total)`` is called after
    each layer is built (dequantized, packed or read from the weights cache): the slow part of a cold load.
    """
    start = time.perf_counter()
    set_threads(threads)
    canonical = model if isinstance(model, CanonicalModel) else _load_canonical(model)
    dev = resolve_device(device)
    precision = resolve_precision(dtype, dev, numerics)
    kv_dtype = resolve_kv_cache(kv_cache, dev, precision, numerics, bool(compile))
    # Dense prefill twins belong to the PyTorch packed kernels; native layers never keep one.
    policy = WeightPolicy(
        dtype=precision.dtype,
        device=dev,
        packed=precision.packed,
        dense_prefill=bool(dense_prefill) and precision.kernels != "native",
        kernels=precision.kernels,
    )
    graphs = dev.type == "cuda" and cuda_graphs
    positions = min(
        canonical.config.context_length,
        max_positions or (CUDA_GRAPH_POSITIONS if graphs else POSITIONS_CEILING),
    )
    store = _pack_store(canonical, policy) if pack_cache else None
    with torch.inference_mode():
        transformer = build_transformer(canonical, policy, positions, store, progress)
    pack_state = "off"
    if store is not None:
        pack_state = "hit" if store.hit else "written"
        store.save()
    if graphs:
        from apr.engine.cuda_graphs import GraphDecode

        # Graph replay removes the per-kernel launch cost that bounds an eager decode step on a GPU.
        graph_step = GraphDecode(transformer)
        decode_step, state = graph_step, graph_step.state
    else:
        from apr.engine.compile import compile_decode
        from apr.engine.native_model import NativeTransformer

        # Off unless asked: the first compile costs tens of seconds, which `apr run` cannot amortize.
        decode_step, state = compile_decode(transformer, bool(compile))
        if isinstance(transformer, NativeTransformer):
            transformer.kv_dtype = kv_dtype  # float32 with compile: the traced per-operator step computes in it
    if transformer.kv_cache_dtype != kv_dtype and kv_dtype != torch.float32:
        raise AprError(
            f"--kv-cache {kv_cache}: this model's layers do not all run on apr's native one-call path, which "
            "alone reads an fp16 cache; use --kv-cache f32"
        )

    return Engine(
        canonical,
        transformer,
        policy,
        state,
        time.perf_counter() - start,
        decode_step,
        pack_state,
        precision.note,
        numerics,
    )


def _pack_store(canonical: CanonicalModel, policy: WeightPolicy):
    from apr.engine.pack_cache import PackStore, cache_key

    if not policy.packed or policy.device.type != "cpu":
        return None
    tag = f"{policy.dtype}-dense{int(policy.dense_prefill)}-{policy.kernels}-abi{native.ABI}"
    key = cache_key(canonical.source_path, tag)
    return None if key is None else PackStore.open(key)


def _load_canonical(model: str | Path) -> CanonicalModel:
    from apr.formats import load_model

    path = Path(model)
    if not path.exists():
        from apr.hub import resolve_model_arg

        path = resolve_model_arg(str(model))
    return load_model(path)
