"""`apr convert` and `apr inspect` in process: outputs, report, JSON, structure flags."""

from __future__ import annotations

import json
import shutil

import numpy as np

from apr.cli.main import main as cli_main
from apr.formats import load_model
from apr.formats.convert import convert
from apr.formats.structure import trace_structure


def main(argv: list[str]) -> int:
    """The CLI in process; click ends successful commands with SystemExit(0)."""
    try:
        return cli_main(argv)
    except SystemExit as done:
        return int(done.code or 0)


def test_convert_cli_writes_output_and_report(fixture_models, tmp_path, capsys):
    out = tmp_path / "m.apr"
    assert main(["convert", str(fixture_models["gemma3"]["gguf"]), "--to", "apr", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tensor_count"] == len(load_model(out).tensors)
    assert summary["bytes_identical"] == summary["tensor_count"] and summary["max_abs_diff"] == 0.0
    report = json.loads((tmp_path / "m.apr.convert-report.json").read_text())
    assert report["output_format"] == "apr" and len(report["tensors"]) == summary["tensor_count"]


def test_convert_cli_dtype_bf16_to_safetensors(fixture_models, tmp_path, capsys):
    out = tmp_path / "hf"
    assert (
        main(["convert", str(fixture_models["qwen2"]["apr"]), "--to", "safetensors", "--dtype", "bf16", "-o", str(out)])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    assert {t.info.ggml_type for t in load_model(out).tensors.values()} == {30}


def test_convert_refuses_to_overwrite_its_source(fixture_models, tmp_path, capsys):
    src = tmp_path / "m.gguf"
    shutil.copyfile(fixture_models["llama"]["gguf"], src)
    assert main(["convert", str(src), "--to", "gguf", "-o", str(src)]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_inspect_json_lists_tensors_and_config(fixture_models, capsys):
    assert main(["inspect", str(fixture_models["qwen2"]["gguf"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "gguf" and info["architecture"] == "qwen2"
    assert info["config"]["rope_theta"] == 1e6 and info["tokenizer"]["has_chat_template"]
    assert {t["dtype"] for t in info["tensors"]} >= {"Q8_0", "Q4_K", "Q6_K", "Q4_1", "F16", "F32"}


def test_inspect_trace_structure_text(fixture_models, capsys):
    assert main(["inspect", str(fixture_models["qwen2"]["safetensors"]), "--trace-structure"]) == 0
    text = capsys.readouterr().out
    assert "bias_mean model.layers.0.self_attn.q_proj.bias" in text and "flags: none" in text


def test_trace_structure_flags_zeroed_norms_and_biases(fixture_models, tmp_path):
    """A broken converter (GH-189 zeroed norms, dropped biases) is flagged."""
    hf = tmp_path / "hf"
    convert(fixture_models["qwen2"]["gguf"], "safetensors", hf)
    weights = hf / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    for name in ("model.layers.0.input_layernorm.weight", "model.layers.1.self_attn.v_proj.bias"):
        start, stop = header[name]["data_offsets"]
        data[8 + header_len + start : 8 + header_len + stop] = bytes(stop - start)
    weights.write_bytes(bytes(data))
    flags = trace_structure(load_model(hf))["flags"]
    assert any("input_layernorm" in f and "near zero" in f for f in flags)
    assert any("v_proj.bias" in f and "all zero" in f for f in flags)
    assert trace_structure(load_model(fixture_models["qwen2"]["gguf"]))["flags"] == []


def test_trace_structure_stats_are_exact(fixture_models):
    model = load_model(fixture_models["llama"]["gguf"])
    report = trace_structure(model, name_filter="mlp.down_proj")
    row = next(t for t in report["tensors"] if t["name"] == "model.layers.0.mlp.down_proj.weight")
    values = model.tensors["model.layers.0.mlp.down_proj.weight"].dequantize().numpy().astype(np.float64)
    assert np.isclose(row["mean"], values.mean()) and np.isclose(row["std"], values.std())
    assert row["min"] == values.min() and row["max"] == values.max() and row["nan_count"] == 0
    assert len(report["tensors"]) == model.config.num_layers
