"""Read a GGUF v2/v3 file into a CanonicalModel: strict checks, lazy mmap tensors, HF names and conventions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from apr.errors import FormatError
from apr.formats import names
from apr.formats.ggml import GGML_TYPES, tensor_nbytes, type_name
from apr.formats.gguf_config import config_from_gguf, spec_from_gguf
from apr.formats.gguf_parse import GGUFHeader, GGUFTensorInfo, parse_gguf_header
from apr.formats.model import CanonicalModel, TensorInfo
from apr.formats.shapes import check_shapes
from apr.formats.tensor_source import StoredTensor, page_dropper, rope_permutation
from apr.formats.tokenizer import Tokenizer

# Arrays this long stay out of CanonicalModel.metadata (the tokenizer keeps them).
_BIG_ARRAY = 1024


def read_gguf_metadata(path: Path) -> tuple[np.memmap, GGUFHeader]:
    """The file mapped read-only, and its parsed header."""
    if path.stat().st_size < 24:
        raise FormatError(
            f"{path}: truncated GGUF file ({path.stat().st_size} bytes, the header alone needs 24); re-download it"
        )
    data = np.memmap(path, dtype=np.uint8, mode="r")
    return data, parse_gguf_header(path, data.data)


def read_gguf(path: Path) -> CanonicalModel:
    """Load ``path`` lazily: tensors stay in the mmap until ``raw``/``dequantize`` is called."""
    path = Path(path)
    data, header = read_gguf_metadata(path)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch not in ("qwen2", "llama", "gemma3"):
        raise FormatError(f"{path}: GGUF architecture {arch!r} is not supported (qwen2, llama, gemma3)")
    gguf_names = {t.name for t in header.tensors}
    try:
        spec = spec_from_gguf(meta)
        tokenizer = Tokenizer(spec)
        config = config_from_gguf(meta, gguf_names, spec)
    except (ValueError, TypeError) as err:
        raise FormatError(f"{path}: bad GGUF metadata: {err}") from err
    tensors: dict[str, StoredTensor] = {}
    spans: list[tuple[int, int, str]] = []  # (start, end, GGUF name) of each tensor's bytes
    for tensor in header.tensors:
        hf_name = names.gguf_to_hf(arch, tensor.name)
        if hf_name is None:
            raise FormatError(f"{path}: unexpected tensor {tensor.name!r} for architecture {arch}")
        if tensor.offset % header.alignment:
            raise FormatError(
                f"{path}: tensor {tensor.name!r} data offset {tensor.offset} is not "
                f"{header.alignment}-aligned; the file is corrupt"
            )
        if hf_name in tensors:
            raise FormatError(f"{path}: two tensors map to {hf_name!r}; the file is corrupt")
        start = header.data_offset + tensor.offset
        tensors[hf_name] = _tensor_source(path, data, start, tensor, hf_name, config)
        spans.append((start, start + tensors[hf_name].info.nbytes, tensor.name))
    _check_no_overlap(path, spans)
    missing = [
        n for n in names.expected_hf_names(arch, config.num_layers, tied=config.tie_word_embeddings) if n not in tensors
    ]
    if missing:
        raise FormatError(
            f"{path}: missing tensor {names.hf_to_gguf(arch, missing[0])!r} "
            f"({len(missing)} missing in all); the file is incomplete"
        )
    check_shapes(path, config, tensors)
    metadata = {k: v for k, v in meta.items() if not (isinstance(v, list) and len(v) > _BIG_ARRAY)}
    return CanonicalModel(
        config=config, tokenizer=tokenizer, tensors=tensors, source_path=path, source_format="gguf", metadata=metadata
    )


def _check_no_overlap(path: Path, spans: list[tuple[int, int, str]]) -> None:
    """Two tensors sharing bytes means a corrupt (or crafted) file: one of them cannot hold its values."""
    spans = sorted(spans)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise FormatError(
                f"{path}: tensors {first!r} and {second!r} share bytes; the file is corrupt, re-download it"
            )


def _tensor_source(
    path: Path, data: np.memmap, start: int, tensor: GGUFTensorInfo, hf_name: str, config: Any
) -> StoredTensor:
    file_size = len(data)
    type_id = tensor.type_id
    shape = tuple(reversed(tensor.ne))
    if type_id not in GGML_TYPES:
        raise FormatError(f"{path}: tensor {tensor.name!r} has unsupported type {type_name(type_id)}")
    try:
        expected = tensor_nbytes(type_id, shape)
    except ValueError as err:
        raise FormatError(f"{path}: tensor {tensor.name!r} {list(shape)}: {err}") from err
    if start + expected > file_size:
        raise FormatError(
            f"{path}: tensor {tensor.name!r} data [{start}, {start + expected}) lies beyond the end "
            f"of the file ({file_size} bytes); the file is truncated, re-download it"
        )
    offset = config.norm_weight_offset if names.is_norm_weight(hf_name) else 0.0
    info = TensorInfo(name=hf_name, shape=shape, ggml_type=type_id, nbytes=expected, value_offset=offset)
    stored_rows = None
    if names.is_rope_permuted(config.architecture, hf_name):
        n_head = config.num_heads if "q_proj" in hf_name else config.num_kv_heads
        stored_rows = rope_permutation(shape[0], n_head)

    def load() -> np.ndarray:
        return data[start : start + expected]

    return StoredTensor(info, load, stored_rows, release=page_dropper(data, start, start + expected))
