"""Write a CanonicalModel as a self-contained GGUF v3 file, streaming one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from apr.formats import names
from apr.formats.atomic import atomic_path
from apr.formats.ggml import tensor_nbytes
from apr.formats.gguf_config import gguf_kv_from_config, gguf_kv_from_spec
from apr.formats.model import CanonicalModel
from apr.formats.tensor_encode import DtypeChoice, encode, target_type
from apr.formats.tensor_source import rope_permutation

Progress = Callable[[str, int], None]
# Source keys worth carrying into a GGUF we write (provenance), when the source was GGUF too.
_CARRIED_PREFIX = "general."
_NOT_CARRIED = {"general.architecture", "general.alignment", "general.file_type", "general.quantization_version"}


def _typed(key: str, value: Any) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    if isinstance(value, bool):
        return value, GGUFValueType.BOOL, None
    if isinstance(value, int):
        return value, GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.INT64, None
    if isinstance(value, float):
        return value, GGUFValueType.FLOAT32, None
    if isinstance(value, str):
        return value, GGUFValueType.STRING, None
    if isinstance(value, list):
        if key == "tokenizer.ggml.token_type":
            return value, GGUFValueType.ARRAY, GGUFValueType.INT32
        if key == "tokenizer.ggml.scores":
            return value, GGUFValueType.ARRAY, GGUFValueType.FLOAT32
        if value and all(isinstance(v, str) for v in value):
            return value, GGUFValueType.ARRAY, GGUFValueType.STRING
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return value, GGUFValueType.ARRAY, GGUFValueType.INT32
    raise ValueError(f"cannot store metadata {key!r} of type {type(value).__name__} in GGUF")


def gguf_plan(model: CanonicalModel, dtype: DtypeChoice) -> list[tuple[str, str, int, float]]:
    """(canonical name, GGUF name, target type, stored offset) for every tensor, in write order."""
    config = model.config
    plan = []
    for name, source in model.tensors.items():
        gguf_name = names.hf_to_gguf(config.architecture, name)
        if gguf_name is None:
            raise ValueError(f"tensor {name!r} has no GGUF name for {config.architecture}")
        offset = config.norm_weight_offset if names.is_norm_weight(name) else 0.0
        plan.append((name, gguf_name, target_type(source.info.ggml_type, dtype), offset))
    return plan


def write_gguf(
    model: CanonicalModel, out: Path, *, dtype: DtypeChoice = "keep", progress: Progress | None = None
) -> Path:
    """Write ``model`` to ``out`` (temp file, then rename). Quantized blocks are carried byte for byte."""
    config = model.config
    plan = gguf_plan(model, dtype)
    with atomic_path(Path(out)) as temp:
        writer = GGUFWriter(temp, config.architecture)
        kv: dict[str, Any] = {}
        if model.source_format == "gguf":
            kv.update(
                {
                    k: v
                    for k, v in model.metadata.items()
                    if k.startswith(_CARRIED_PREFIX)
                    and k not in _NOT_CARRIED
                    and isinstance(v, (str, int, float, bool))
                }
            )
        if config.name:
            kv["general.name"] = config.name
        kv["general.quantization_version"] = 2
        kv.update(gguf_kv_from_config(config))
        kv.update(gguf_kv_from_spec(model.tokenizer.spec))
        for key, value in kv.items():
            val, vtype, sub = _typed(key, value)
            writer.add_key_value(key, val, vtype, sub_type=sub)
        for name, gguf_name, out_type, _ in plan:
            info = model.tensors[name].info
            writer.add_tensor_info(
                gguf_name,
                list(info.shape),
                np.dtype(np.float32),
                tensor_nbytes(out_type, info.shape),
                raw_dtype=GGMLQuantizationType(out_type),
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, _, out_type, offset in plan:
            source = model.tensors[name]
            data = encode(source, out_type, offset)
            if names.is_rope_permuted(config.architecture, name):
                n_head = config.num_heads if "q_proj" in name else config.num_kv_heads
                data = data[rope_permutation(data.shape[0], n_head)]
            writer.write_tensor_data(np.ascontiguousarray(data).reshape(-1))
            source.release()
            if progress is not None:
                progress(name, int(data.nbytes))
        writer.close()
    return Path(out)
