"""Tiny deterministic random-weight checkpoints of qwen2, llama and gemma3 in every format (seconds to build)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from apr.formats import names
from apr.formats.apr_write import write_apr
from apr.formats.config import ModelConfig
from apr.formats.fixture_tokenizers import TOKENIZER_SPECS
from apr.formats.ggml import BF16, F16, F32, FLOAT_TYPES, Q4_1, Q4_K, Q6_K, Q8_0, encode_float, ggml_type, tensor_nbytes
from apr.formats.model import CanonicalModel, TensorInfo
from apr.formats.tensor_source import StoredTensor
from apr.formats.tokenizer import Tokenizer

FIXTURE_ARCHS = ("qwen2", "llama", "gemma3")
_SEEDS = {"qwen2": 2, "llama": 3, "gemma3": 5}


def fixture_config(arch: str, vocab_size: int, spec) -> ModelConfig:
    common = dict(
        architecture=arch,
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        context_length=512,
        bos_token_id=spec.bos_token_id,
        eos_token_ids=spec.eos_token_ids,
        pad_token_id=spec.pad_token_id,
        add_bos_token=spec.add_bos_token,
        name=f"apr-fixture-{arch}",
    )
    if arch == "qwen2":
        return ModelConfig(
            **common,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            attention_bias=True,
        ).validate()
    if arch == "llama":
        return ModelConfig(
            **common,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rms_norm_eps=1e-5,
            rope_theta=100_000.0,
            tie_word_embeddings=True,
        ).validate()
    from apr.formats.gguf_config import GEMMA3_LOCAL_ROPE_BASE, gemma3_layer_types

    # head_dim 256 = query_pre_attn_scalar, as in Gemma3 270M (transformers assumes 256 for GGUF files).
    return ModelConfig(
        **common,
        num_layers=6,
        num_heads=2,
        num_kv_heads=1,
        head_dim=256,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        rope_local_theta=GEMMA3_LOCAL_ROPE_BASE,
        tie_word_embeddings=True,
        qk_norm=True,
        hidden_activation="gelu_tanh",
        norm_weight_offset=1.0,
        embedding_multiplier=8.0,
        query_pre_attn_scalar=256.0,
        sliding_window=16,
        layer_types=gemma3_layer_types(6),
    ).validate()


def _storage_type(arch: str, name: str, layer: int) -> int:
    """A mix of GGML types so every carried block type is exercised (K-quants need 256-wide rows)."""
    if name.endswith(("norm.weight", ".bias")):
        return F32
    if name == "model.embed_tokens.weight":
        return Q8_0
    if name == "lm_head.weight":
        return F16
    if name.endswith("down_proj.weight"):
        return Q4_K if layer % 2 == 0 else Q6_K
    if name.endswith(("o_proj.weight", "gate_proj.weight")):
        return Q4_1
    if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
        return Q4_1  # row permutation on quantized rows is exercised here
    if arch == "gemma3" and name.endswith("up_proj.weight"):
        return BF16
    return Q8_0


def _random_blocks(rng: np.random.Generator, type_id: int, rows: int, cols: int) -> np.ndarray:
    info = ggml_type(type_id)
    blocks = rng.integers(0, 256, size=(rows * cols // info.block_size, info.block_bytes), dtype=np.uint8)
    if type_id == Q4_K:  # d, dmin (f16) lead each block
        blocks[:, 0:2] = rng.uniform(2e-4, 6e-4, size=(len(blocks), 1)).astype(np.float16).view(np.uint8)
        blocks[:, 2:4] = rng.uniform(2e-4, 6e-4, size=(len(blocks), 1)).astype(np.float16).view(np.uint8)
    else:  # Q6_K: int8 scales at 192..208, d (f16) at 208
        blocks[:, 192:208] = rng.integers(-40, 41, size=(len(blocks), 16), dtype=np.int8).view(np.uint8)
        blocks[:, 208:210] = rng.uniform(1e-4, 3e-4, size=(len(blocks), 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def _values(rng: np.random.Generator, config: ModelConfig, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if names.is_norm_weight(name):
        # k/256: exact in float32 both as w and as 1 + w, so Gemma's +1 convention round-trips exactly.
        step = 256.0 if config.norm_weight_offset else 64.0
        base = 0.0 if config.norm_weight_offset else 1.0
        return (base + rng.integers(-16, 17, size=shape) / step).astype(np.float32)
    scale = 0.5 if name == "model.embed_tokens.weight" else 0.1
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _stored(
    rng: np.random.Generator, config: ModelConfig, name: str, shape: tuple[int, ...], type_id: int
) -> np.ndarray:
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    if type_id in (Q4_K, Q6_K):
        return _random_blocks(rng, type_id, rows, shape[-1])
    values = _values(rng, config, name, shape)
    if type_id in FLOAT_TYPES:
        return encode_float(values, type_id).reshape(rows, -1)
    quantized = gguf_quants.quantize(values.reshape(rows, shape[-1]), GGMLQuantizationType(type_id))
    return np.asarray(quantized, dtype=np.uint8).reshape(rows, -1)


def build_fixture_model(arch: str) -> CanonicalModel:
    """The in-memory fixture model of ``arch`` (canonical names, HF conventions)."""
    from apr.formats.shapes import expected_shape

    spec = TOKENIZER_SPECS[arch]()
    config = fixture_config(arch, spec.vocab_size, spec)
    rng = np.random.default_rng(_SEEDS[arch])
    tensors: dict[str, StoredTensor] = {}
    for name in names.expected_hf_names(arch, config.num_layers, tied=config.tie_word_embeddings):
        shape = expected_shape(config, name)
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else 0
        type_id = _storage_type(arch, name, layer)
        data = _stored(rng, config, name, shape, type_id)
        info = TensorInfo(name=name, shape=shape, ggml_type=type_id, nbytes=tensor_nbytes(type_id, shape))
        tensors[name] = StoredTensor(info, functools.partial(np.reshape, data, -1))
    return CanonicalModel(
        config=config,
        tokenizer=Tokenizer(spec),
        tensors=tensors,
        source_path=Path(f"<fixture:{arch}>"),
        source_format="gguf",
        metadata={},
    )


def build_fixture_set(root: Path) -> dict[str, dict[str, Path]]:
    """Write every fixture model in every format under ``root``: ``{arch: {format: path}}``."""
    from apr.formats.gguf_write import write_gguf
    from apr.formats.safetensors_write import write_safetensors_dir

    root = Path(root)
    out: dict[str, dict[str, Path]] = {}
    for arch in FIXTURE_ARCHS:
        model = build_fixture_model(arch)
        folder = root / arch
        paths = {
            "gguf": write_gguf(model, folder / f"{arch}-fixture.gguf"),
            "safetensors": write_safetensors_dir(model, folder / "safetensors", dtype="f32"),
        }
        paths["apr"] = write_apr(model, folder / f"{arch}-fixture.apr")
        out[arch] = paths
    return out
