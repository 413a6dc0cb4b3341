"""Bad input: every defect gives one FormatError line naming the file (exit 2 from the CLI), nothing half-written."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from apr.cli.main import main
from apr.errors import FormatError
from apr.formats import load_model
from apr.formats.apr_layout import HEADER_SIZE, AprIndexEntry, unpack_header, unpack_index
from apr.formats.gguf_parse import parse_gguf_header


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(FormatError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- GGUF -----------------------------------------------------------------------------------------


@pytest.fixture
def gguf(fixture_models, tmp_path) -> Path:
    return _copy(fixture_models["llama"]["gguf"], tmp_path / "m.gguf")


def test_gguf_truncated_in_header(gguf):
    gguf.write_bytes(gguf.read_bytes()[:2000])
    _expect_error(gguf, "truncated")


def test_gguf_truncated_in_data(gguf):
    gguf.write_bytes(gguf.read_bytes()[:-100])
    _expect_error(gguf, "beyond the end")


def test_gguf_tiny_file(gguf):
    gguf.write_bytes(b"GGUF\x03")
    _expect_error(gguf, "truncated")


def test_gguf_wrong_version(gguf):
    data = bytearray(gguf.read_bytes())
    data[4:8] = struct.pack("<I", 99)
    gguf.write_bytes(bytes(data))
    _expect_error(gguf, "version 99")


def test_gguf_duplicate_tensor_names(gguf):
    data = gguf.read_bytes()
    # Same length names: renaming attn_k to attn_q makes two tensors called blk.0.attn_q.weight.
    assert data.count(b"blk.0.attn_k.weight") == 1
    gguf.write_bytes(data.replace(b"blk.0.attn_k.weight", b"blk.0.attn_q.weight"))
    _expect_error(gguf, "duplicate tensor name")


def test_gguf_shape_mismatch(gguf):
    data = bytearray(gguf.read_bytes())
    header = parse_gguf_header(gguf, memoryview(data))
    name = b"blk.0.attn_v.weight"
    pos = data.index(name) + len(name) + 4  # skip n_dims
    ne1 = struct.unpack_from("<Q", data, pos + 8)[0]
    struct.pack_into("<Q", data, pos + 8, ne1 * 2)  # twice the rows: too big for the config
    gguf.write_bytes(bytes(data))
    assert header.tensors
    _expect_error(gguf)


def test_wrong_magic_is_unknown_format(gguf):
    data = bytearray(gguf.read_bytes())
    data[:4] = b"XXXX"
    gguf.write_bytes(bytes(data))
    _expect_error(gguf, "unknown format")


# --- APR ------------------------------------------------------------------------------------------


@pytest.fixture
def apr(fixture_models, tmp_path) -> Path:
    return _copy(fixture_models["qwen2"]["apr"], tmp_path / "m.apr")


def _rewrite_index(path: Path, mutate) -> None:
    """Edit index entries, keep the header valid and re-seal the footer so later checks are reached."""
    data = bytearray(path.read_bytes())
    header = unpack_header(bytes(data[:HEADER_SIZE]))
    entries = unpack_index(bytes(data[header.tensor_index_offset : header.data_offset]), header.tensor_count)
    packed = b"".join(e.pack() for e in mutate(entries))
    data[header.tensor_index_offset : header.tensor_index_offset + len(packed)] = packed
    data[-4:] = (zlib.crc32(bytes(data[:-4])) & 0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _replace(entries, name, **changes):
    return [AprIndexEntry(**{**e.__dict__, **changes}) if e.name == name else e for e in entries]


def test_apr_truncated(apr):
    apr.write_bytes(apr.read_bytes()[:5000])
    _expect_error(apr, "truncated")


def test_apr_truncated_in_data(apr):
    apr.write_bytes(apr.read_bytes()[:-1000])
    _expect_error(apr, "footer checksum")


def test_apr_too_short(apr):
    apr.write_bytes(apr.read_bytes()[:40])
    _expect_error(apr, "truncated")


def test_apr_wrong_version(apr):
    data = bytearray(apr.read_bytes())
    data[4] = 3
    apr.write_bytes(bytes(data))
    _expect_error(apr, "version 3")


def test_apr_bad_header_crc(apr):
    data = bytearray(apr.read_bytes())
    data[50] ^= 0xFF  # a reserved byte: covered by the header CRC
    apr.write_bytes(bytes(data))
    _expect_error(apr, "header checksum")


def test_apr_bad_footer_crc(apr):
    data = bytearray(apr.read_bytes())
    data[-100] ^= 0x01  # one bit of tensor data
    apr.write_bytes(bytes(data))
    _expect_error(apr, "footer checksum")


def test_apr_offset_out_of_bounds(apr):
    _rewrite_index(apr, lambda es: _replace(es, "lm_head.weight", offset=1 << 40))
    _expect_error(apr, "lm_head.weight", "past the end")


def test_apr_size_mismatch(apr):
    _rewrite_index(apr, lambda es: _replace(es, "model.norm.weight", size=8))
    _expect_error(apr, "model.norm.weight", "needs")


def test_apr_unknown_dtype_is_an_error_not_f32(apr):
    _rewrite_index(apr, lambda es: _replace(es, "model.norm.weight", dtype=99))
    _expect_error(apr, "unknown APR dtype code 99")


def test_apr_duplicate_names(apr):
    _rewrite_index(apr, _rename_to_neighbour)
    _expect_error(apr, "duplicate tensor name")


def _rename_to_neighbour(entries):
    """Give an entry the name of the one before it (same length, so the index keeps its size)."""
    out = list(entries)
    for k in range(len(out) - 1):
        a, b = out[k], out[k + 1]
        if len(a.name) == len(b.name):
            out[k + 1] = AprIndexEntry(a.name, b.dtype, b.shape, b.offset, b.size)
            return out
    raise AssertionError("no neighbouring names of equal length")


def test_apr_unsorted_index(apr):
    def swap(entries):
        out = list(entries)
        for k in range(len(out) - 1):
            a, b = out[k], out[k + 1]
            if len(a.name) == len(b.name) and len(a.shape) == len(b.shape):
                out[k], out[k + 1] = b, a
                return out
        raise AssertionError("no swappable neighbours")

    _rewrite_index(apr, swap)
    _expect_error(apr, "not sorted")


# --- SafeTensors ----------------------------------------------------------------------------------


@pytest.fixture
def hf_dir(fixture_models, tmp_path) -> Path:
    return _copy(fixture_models["gemma3"]["safetensors"], tmp_path / "hf")


def test_safetensors_missing_config(hf_dir):
    (hf_dir / "config.json").unlink()
    _expect_error(hf_dir, "config.json")


def test_safetensors_missing_tokenizer(hf_dir):
    (hf_dir / "tokenizer.json").unlink()
    _expect_error(hf_dir, "tokenizer.json")


def test_safetensors_single_file_finds_sibling_config(hf_dir):
    model = load_model(hf_dir / "model.safetensors")
    assert model.config.architecture == "gemma3"


def test_safetensors_truncated(hf_dir):
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    _expect_error(weights.parent, "truncated")


def test_safetensors_header_length_beyond_file(hf_dir):
    weights = hf_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 2)
    weights.write_bytes(bytes(data))
    _expect_error(hf_dir)


def _edit_header(weights: Path, edit) -> None:
    data = weights.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    text = edit(json.dumps(header, separators=(",", ":")))
    encoded = text.encode()
    encoded += b" " * (-len(encoded) % 8)
    weights.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + n :])


def test_safetensors_duplicate_names(hf_dir):
    weights = hf_dir / "model.safetensors"
    _edit_header(
        weights,
        lambda t: t.replace('"model.layers.0.self_attn.k_proj.weight"', '"model.layers.0.self_attn.q_proj.weight"'),
    )
    _expect_error(hf_dir, "duplicate tensor name")


def test_safetensors_shape_mismatch(hf_dir):
    weights = hf_dir / "model.safetensors"
    data = weights.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["model.norm.weight"]["shape"] = [header["model.norm.weight"]["shape"][0] * 2]
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    weights.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + n :])
    _expect_error(hf_dir, "model.norm.weight")


def test_safetensors_bad_config_json(hf_dir):
    (hf_dir / "config.json").write_text("{not json")
    _expect_error(hf_dir, "config.json", "not valid JSON")


def test_config_without_rope_theta_is_refused(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    for key in ("rope_theta", "rope_parameters"):
        config.pop(key)
    (hf_dir / "config.json").write_text(json.dumps(config))
    _expect_error(hf_dir, "config.json", "rope_theta")


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_bad_input_exits_2_with_one_line_and_no_output(gguf, tmp_path, capsys):
    gguf.write_bytes(gguf.read_bytes()[:3000])
    out = tmp_path / "out.apr"
    assert main(["convert", str(gguf), "--to", "apr", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.apr*"))


def test_cli_missing_model_exits_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.gguf")]) == 2
    err = capsys.readouterr().err
    assert "nope.gguf" in err and "Traceback" not in err


def test_failed_write_leaves_previous_output_untouched(fixture_models, tmp_path, monkeypatch):
    from apr.formats import apr_write
    from apr.formats.convert import convert

    out = tmp_path / "m.apr"
    out.write_bytes(b"previous")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(apr_write, "iter_encoded", boom)
    with pytest.raises(OSError):
        convert(fixture_models["llama"]["gguf"], "apr", out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.apr"]
