"""A real model's long prompt on the native one-call layers (chunked, tiled attention, fp16 KV) vs the per-operator path."""

from __future__ import annotations

import pytest
import torch

from apr.engine import load_engine, native
from apr.engine.bench import bench_prompt
from apr.engine.kv_cache import SequenceCache
from apr.engine.model import Transformer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}"),
]


def test_a_prompt_past_the_old_1024_token_limit_matches_the_per_operator_path(real_model):
    """smollm2:135m, 1500 natural-text tokens (3 chunks of 512): the one-call layers with their fp16 cache
    against Transformer.prefill (scaled_dot_product_attention, float32 cache) over the same products. Both
    quantize activations to int8, so any rounding difference re-draws that rounding (bench/README.md: the two
    float32 paths differ by ~0.15 nats a token on short texts; a single logit moved by 12.5 % of the range
    here): next-token choice the same at >= 95 % of positions, the prompt's own tokens scored within 0.25
    nats a token on average."""
    engine = load_engine(real_model("smollm2:135m"), device="cpu", compile=False)
    model = engine.transformer
    assert model.native_stack is not None and engine.max_positions == engine.config.context_length == 8192
    ids = torch.tensor(bench_prompt(engine, 1500))
    with torch.inference_mode():
        ours = model.head(model.prefill(ids, model.new_cache(1536)))
        cfg = model.cfg
        cache = SequenceCache(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, 1536, model.dtype, torch.device("cpu"))
        reference = model.head(Transformer.prefill(model, ids, cache))
    agree = float((ours.argmax(-1) == reference.argmax(-1)).float().mean())
    targets = ids[1:, None]
    scored = [torch.log_softmax(logits[:-1], -1).gather(1, targets)[:, 0] for logits in (ours, reference)]
    mean_nats = float((scored[0] - scored[1]).abs().mean())
    print(f"smollm2 1500-token prompt: top-1 {agree:.1%}, mean |dlog p| {mean_nats:.3f} nats")
    assert agree >= 0.95 and mean_nats < 0.25
