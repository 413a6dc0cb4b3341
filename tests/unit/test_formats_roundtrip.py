"""Every format pair on every fixture model: lossless carries, exact values, strict re-reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apr.formats import load_model
from apr.formats.convert import convert, report_path_for
from apr.formats.fixtures import FIXTURE_ARCHS
from apr.formats.gguf_parse import parse_gguf_header

FORMATS = ("gguf", "safetensors", "apr")


def _out_name(fmt: str) -> str:
    return {"gguf": "model.gguf", "apr": "model.apr", "safetensors": "hf"}[fmt]


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
@pytest.mark.parametrize("src_fmt", FORMATS)
@pytest.mark.parametrize("dst_fmt", FORMATS)
def test_every_pair_converts_exactly(fixture_models, tmp_path, arch, src_fmt, dst_fmt):
    src = fixture_models[arch][src_fmt]
    out = tmp_path / _out_name(dst_fmt)
    report = convert(src, dst_fmt, out)
    before, after = load_model(src), load_model(out)
    assert after.source_format == dst_fmt
    assert after.config == before.config
    text = "def f(x):\n    return x + 1  # 你好 café"
    assert after.tokenizer.encode(text) == before.tokenizer.encode(text)
    assert after.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}]
    ) == before.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert after.tokenizer.eos_token_ids == before.tokenizer.eos_token_ids
    assert len(report.tensors) == len(before.tensors)
    # Fixture values are exact in f32 (and Gemma's 1 + w too), so no pair may change a single value.
    assert report.max_abs_diff == 0.0
    for name, source in before.tensors.items():
        assert torch.equal(after.tensors[name].dequantize(), source.dequantize()), name
    if dst_fmt in ("gguf", "apr") and src_fmt != "safetensors":
        # keep: GGML blocks are carried, never re-quantized
        assert all(t.dtype_before == t.dtype_after for t in report.tensors)
    written = json.loads(report_path_for(out).read_text())
    assert written["summary"]["tensor_count"] == len(before.tensors)
    assert {"sha256_before", "sha256_after", "max_abs_diff", "shape", "dtype_before"} <= set(written["tensors"][0])


def _gguf_data_section(path):
    data = np.memmap(path, dtype=np.uint8, mode="r")
    header = parse_gguf_header(path, memoryview(data))
    return header, bytes(data[header.data_offset :])


@pytest.mark.parametrize("arch", FIXTURE_ARCHS)
def test_gguf_apr_gguf_is_byte_identical(fixture_models, tmp_path, arch):
    src = fixture_models[arch]["gguf"]
    convert(src, "apr", tmp_path / "m.apr")
    convert(tmp_path / "m.apr", "gguf", tmp_path / "back.gguf")
    h1, data1 = _gguf_data_section(src)
    h2, data2 = _gguf_data_section(tmp_path / "back.gguf")
    assert data1 == data2
    assert [(t.name, t.ne, t.type_id, t.offset) for t in h1.tensors] == [
        (t.name, t.ne, t.type_id, t.offset) for t in h2.tensors
    ]
    assert h2.metadata["tokenizer.ggml.tokens"] == h1.metadata["tokenizer.ggml.tokens"]
    assert h2.metadata.get("tokenizer.chat_template") == h1.metadata.get("tokenizer.chat_template")


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("f16", torch.float16)])
def test_safetensors_half_dtypes_round_to_nearest(fixture_models, tmp_path, dtype, torch_dtype):
    src = fixture_models["qwen2"]["gguf"]
    out = tmp_path / "hf"
    report = convert(src, "safetensors", out, dtype=dtype)
    source, written = load_model(src), load_model(out)
    for name, tensor in source.tensors.items():
        expected = tensor.dequantize().to(torch_dtype).to(torch.float32)
        assert torch.equal(written.tensors[name].dequantize(), expected), name
    assert 0 < report.max_abs_diff < 0.05
    assert all(t.dtype_after == dtype.upper() for t in report.tensors)


def test_gguf_f32_dtype_is_exact_and_float(fixture_models, tmp_path):
    src = fixture_models["gemma3"]["gguf"]
    report = convert(src, "gguf", tmp_path / "f32.gguf", dtype="f32")
    assert report.max_abs_diff == 0.0
    assert {t.dtype_after for t in report.tensors} == {"F32"}


def test_writers_leave_no_temporary_files(fixture_models, tmp_path):
    for fmt in FORMATS:
        convert(fixture_models["llama"]["gguf"], fmt, tmp_path / _out_name(fmt))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sharded_safetensors_round_trip(fixture_models, tmp_path):
    from apr.formats.safetensors_write import write_safetensors_dir

    source = load_model(fixture_models["gemma3"]["gguf"])
    out = write_safetensors_dir(source, tmp_path / "hf", dtype="f32", max_shard_bytes=200_000)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(source.tensors)
    again = load_model(out)
    for name, tensor in source.tensors.items():
        assert torch.equal(again.tensors[name].dequantize(), tensor.dequantize()), name
    (out / shards[1]).unlink()
    from apr.errors import FormatError

    with pytest.raises(FormatError, match="missing"):
        load_model(out)


def test_outputs_get_ordinary_permissions(fixture_models, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        for fmt in FORMATS:
            out = convert(fixture_models["llama"]["gguf"], fmt, tmp_path / _out_name(fmt)).output
            mode = stat.S_IMODE(os.stat(out).st_mode)
            assert mode == (0o755 if fmt == "safetensors" else 0o644), (fmt, oct(mode))
    finally:
        os.umask(umask)
