"""Write a CanonicalModel as a Hugging Face directory: config, generation config, tokenizer, SafeTensors shards."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from apr.formats.atomic import atomic_dir
from apr.formats.ggml import tensor_nbytes
from apr.formats.hf_config import generation_config_from_model_config, hf_config_from_model_config
from apr.formats.model import CanonicalModel
from apr.formats.safetensors_io import GGML_TO_DTYPE, SafeTensorsStreamWriter
from apr.formats.tensor_encode import FLOAT_OF_CHOICE, DtypeChoice, iter_encoded

Progress = Callable[[str, int], None]
DEFAULT_SHARD_BYTES = 4 * 1024**3


def _plan_types(model: CanonicalModel, dtype: DtypeChoice) -> dict[str, int]:
    """Float type per tensor: the asked one, or for ``keep`` the stored float type (quantized -> f32)."""
    out = {}
    for name, source in model.tensors.items():
        if dtype == "keep":
            out[name] = source.info.ggml_type if source.info.ggml_type in GGML_TO_DTYPE else FLOAT_OF_CHOICE["f32"]
        else:
            out[name] = FLOAT_OF_CHOICE[dtype]
    return out


def _shards(model: CanonicalModel, types: dict[str, int], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, source in model.tensors.items():
        nbytes = tensor_nbytes(types[name], source.info.shape)
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_safetensors_dir(
    model: CanonicalModel,
    out_dir: Path,
    *,
    dtype: DtypeChoice = "f32",
    progress: Progress | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write ``out_dir`` whole (temp dir, then rename). Values are HF convention (norm offsets removed)."""
    types = _plan_types(model, dtype)
    shards = _shards(model, types, max_shard_bytes)
    with atomic_dir(Path(out_dir)) as temp:
        (temp / "config.json").write_text(json.dumps(hf_config_from_model_config(model.config), indent=2))
        (temp / "generation_config.json").write_text(
            json.dumps(generation_config_from_model_config(model.config), indent=2)
        )
        (temp / "tokenizer.json").write_text(model.tokenizer.to_tokenizer_json(), encoding="utf-8")
        (temp / "tokenizer_config.json").write_text(
            json.dumps(model.tokenizer.tokenizer_config(), indent=2, ensure_ascii=False), encoding="utf-8"
        )
        weight_map = {}
        for index, names_in_shard in enumerate(shards):
            file_name = (
                "model.safetensors" if len(shards) == 1 else f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
            )
            layout = [(n, GGML_TO_DTYPE[types[n]], model.tensors[n].info.shape) for n in names_in_shard]
            with (temp / file_name).open("wb") as handle:
                writer = SafeTensorsStreamWriter(handle, layout, {"format": "pt"})
                for name in names_in_shard:
                    for chunk in iter_encoded(model.tensors[name], types[name], 0.0):
                        writer.write_chunk(name, chunk)
                    writer.finish_tensor(name)
                    if progress is not None:
                        progress(name, tensor_nbytes(types[name], model.tensors[name].info.shape))
                    model.tensors[name].release()
                    weight_map[name] = file_name
        if len(shards) > 1:
            total = sum(tensor_nbytes(types[n], s.info.shape) for n, s in model.tensors.items())
            index_doc = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (temp / "model.safetensors.index.json").write_text(json.dumps(index_doc, indent=2))
    return Path(out_dir)
