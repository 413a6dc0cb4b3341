"""Read a Hugging Face SafeTensors checkpoint (directory, single file, or shards) into a CanonicalModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apr.errors import FormatError
from apr.formats import names
from apr.formats.hf_config import model_config_from_hf
from apr.formats.model import CanonicalModel, TensorInfo
from apr.formats.safetensors_io import DTYPE_TO_GGML, SafeTensorEntry, parse_safetensors
from apr.formats.shapes import check_shapes
from apr.formats.tensor_source import StoredTensor, page_dropper
from apr.formats.tokenizer import Tokenizer, _read_json_if_present


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        doc = _read_json_if_present(index)
        files = sorted(set((doc.get("weight_map") or {}).values()))
        if not files:
            raise FormatError(f"{index}: weight_map is empty; re-download the model")
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            raise FormatError(f"{directory}: shard {missing[0]} listed in model.safetensors.index.json is missing")
        return [directory / f for f in files]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FormatError(f"{directory}: no *.safetensors files")
    return files


def _source(data: np.memmap, entry: SafeTensorEntry, hf_name: str, offset: float) -> StoredTensor:
    info = TensorInfo(
        name=hf_name, shape=entry.shape, ggml_type=DTYPE_TO_GGML[entry.dtype], nbytes=entry.nbytes, value_offset=offset
    )
    start, stop = entry.start, entry.start + entry.nbytes

    def load() -> np.ndarray:
        return data[start:stop]

    return StoredTensor(info, load, release=page_dropper(data, start, stop))


def read_safetensors(path: Path) -> CanonicalModel:
    """``path`` is an HF directory or one .safetensors file whose directory holds config.json + tokenizer."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FormatError(
            f"{directory}: no config.json next to the SafeTensors weights; copy the model's "
            "config.json there (the architecture and rope settings cannot be guessed)"
        )
    tokenizer = Tokenizer.from_hf_dir(directory)
    hf = _read_json_if_present(config_path)
    generation = _read_json_if_present(directory / "generation_config.json")
    try:
        config = model_config_from_hf(
            hf, generation, eos_extra=tokenizer.eos_token_ids, add_bos_token=tokenizer.spec.add_bos_token
        )
    except (ValueError, TypeError) as err:
        raise FormatError(f"{config_path}: {err}") from err
    files = [path] if path.is_file() else _weight_files(directory)
    tensors: dict[str, StoredTensor] = {}
    expected = set(names.expected_hf_names(config.architecture, config.num_layers, tied=config.tie_word_embeddings))
    for file in files:
        entries, _ = parse_safetensors(file)
        data = np.memmap(file, dtype=np.uint8, mode="r")
        for entry in entries:
            if entry.name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # some exporters write the tied head out; the embedding is the one weight
            if entry.name not in expected:
                raise FormatError(f"{file}: unexpected tensor {entry.name!r} for {config.architecture}")
            if entry.name in tensors:
                raise FormatError(f"{file}: duplicate tensor name {entry.name!r} across shards")
            tensors[entry.name] = _source(data, entry, entry.name, 0.0)
    missing = sorted(expected - set(tensors))
    if missing:
        raise FormatError(
            f"{directory}: missing tensor {missing[0]!r} ({len(missing)} missing); the checkpoint is incomplete"
        )
    check_shapes(directory, config, tensors)
    return CanonicalModel(
        config=config,
        tokenizer=tokenizer,
        tensors=tensors,
        source_path=path,
        source_format="safetensors",
        metadata={"config.json": hf},
    )
