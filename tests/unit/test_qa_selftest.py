"""The planted-defect self-test on fixture models: each defect really changes the copy, the runner judges copies
from their evidence, and the detection table reports misses as misses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apr.qa.gates.thresholds import GateSet
from apr.qa.selftest.defects import DEFECTS, defect
from apr.qa.selftest.gguf_edit import read_gguf_copy, write_gguf_copy


@pytest.fixture(scope="module")
def fixture_ggufs(tmp_path_factory):
    from apr.formats.fixtures import build_fixture_model
    from apr.formats.gguf_write import write_gguf

    folder = tmp_path_factory.mktemp("fixtures")
    return {arch: write_gguf(build_fixture_model(arch), folder / f"{arch}.gguf") for arch in ("qwen2", "llama")}


def planted(path, defect_id, tmp_path):
    copy = read_gguf_copy(path)
    defect(defect_id).plant(copy)
    return read_gguf_copy(write_gguf_copy(copy, tmp_path / f"{defect_id}.gguf"))


def tensor(copy, name):
    return np.asarray(copy.tensors[name].data)


def test_an_unedited_copy_keeps_every_tensor_byte_and_key(fixture_ggufs, tmp_path):
    clean = read_gguf_copy(fixture_ggufs["qwen2"])
    again = read_gguf_copy(write_gguf_copy(clean, tmp_path / "copy.gguf"))
    assert list(again.tensors) == list(clean.tensors)
    assert all(np.array_equal(tensor(again, n), tensor(clean, n), equal_nan=True) for n in clean.tensors)
    assert {k: v.value for k, v in again.metadata.items()} == {k: v.value for k, v in clean.metadata.items()}


# What each defect must have changed in the written copy (read back with gguf-py), on the qwen2 fixture.
EFFECTS = {
    "layer-order": lambda c, m: np.array_equal(tensor(m, "blk.0.attn_q.weight"), tensor(c, "blk.1.attn_q.weight")),
    "rope-theta": lambda c, m: m.get("qwen2.rope.freq_base") == 10_000.0 != c.get("qwen2.rope.freq_base"),
    "norm-eps": lambda c, m: np.isclose(
        m.get("qwen2.attention.layer_norm_rms_epsilon"), 100 * c.get("qwen2.attention.layer_norm_rms_epsilon")
    ),
    "qk-permutation": lambda c, m: (
        not np.array_equal(tensor(m, "blk.0.attn_q.weight"), tensor(c, "blk.0.attn_q.weight"))
        and sorted(map(bytes, tensor(m, "blk.0.attn_q.weight"))) == sorted(map(bytes, tensor(c, "blk.0.attn_q.weight")))
    ),
    "gate-up-swap": lambda c, m: np.array_equal(tensor(m, "blk.0.ffn_gate.weight"), tensor(c, "blk.0.ffn_up.weight")),
    "quant-scales": lambda c, m: any(
        tensor(m, n).dtype == np.uint8 and not np.array_equal(tensor(m, n), tensor(c, n)) for n in c.tensors
    ),
    "nan-norm": lambda c, m: np.isnan(tensor(m, "blk.1.ffn_norm.weight")).sum() == 1,
    "embedding-transposed": lambda c, m: (
        tensor(m, "token_embd.weight").dtype == np.float16
        and tensor(m, "token_embd.weight").shape[0] == c.get("qwen2.embedding_length")
    ),
    "attn-norm-zeroed": lambda c, m: (
        not np.any(tensor(m, "blk.0.attn_norm.weight")) and not np.any(tensor(m, "blk.1.attn_norm.weight"))
    ),
    "ffn-scaled": lambda c, m: (
        not np.array_equal(tensor(m, "blk.0.ffn_down.weight"), tensor(c, "blk.0.ffn_down.weight"))
    ),
    "tokenizer-dropped": lambda c, m: not any(k.startswith("tokenizer.") for k in m.metadata),
    "vocab-truncated": lambda c, m: (
        len(m.get("tokenizer.ggml.tokens")) == int(0.75 * len(c.get("tokenizer.ggml.tokens")))
    ),
    "eos-changed": lambda c, m: c.get("tokenizer.ggml.tokens")[m.get("tokenizer.ggml.eos_token_id")] == "<|im_start|>",
    "chat-template-broken": lambda c, m: (
        len(m.get("tokenizer.chat_template")) == len(c.get("tokenizer.chat_template")) // 2
    ),
    "bias-dropped": lambda c, m: "blk.0.attn_q.bias" in c.tensors and not any(n.endswith(".bias") for n in m.tensors),
}


def test_the_catalogue_covers_the_issue_list():
    assert set(EFFECTS) == {d.id for d in DEFECTS}


@pytest.mark.parametrize("defect_id", list(EFFECTS))
def test_each_defect_changes_what_it_says(fixture_ggufs, tmp_path, defect_id):
    clean = read_gguf_copy(fixture_ggufs["qwen2"])
    assert EFFECTS[defect_id](clean, planted(fixture_ggufs["qwen2"], defect_id, tmp_path))


def test_ffn_scaling_is_exact_in_dequantized_values(fixture_ggufs, tmp_path):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    clean = read_gguf_copy(fixture_ggufs["qwen2"])
    scaled = planted(fixture_ggufs["qwen2"], "ffn-scaled", tmp_path)
    name = "blk.0.ffn_down.weight"
    kind = GGMLQuantizationType(clean.tensors[name].ggml_type)
    np.testing.assert_allclose(
        dequantize(tensor(scaled, name), kind), 4 * dequantize(tensor(clean, name), kind), rtol=2e-3, atol=1e-6
    )


def test_defects_that_need_a_template_or_biases_say_why_not(fixture_ggufs):
    llama = read_gguf_copy(fixture_ggufs["llama"])
    assert defect("bias-dropped").why_not(llama) == "llama has no q/k/v biases"
    llama.metadata.pop("tokenizer.chat_template")
    assert defect("chat-template-broken").why_not(llama) == "the model has no chat template"


def test_self_test_reports_catches_misses_and_no_false_block(fixture_ggufs, tmp_path):
    """Static gates and perplexity on the llama fixture: rope-theta (1e5 -> 1e4 is plausible for llama, and the
    fixture has no reference config) is honestly reported as missed."""
    from apr.qa.selftest.report import read_results, render_text
    from apr.qa.selftest.run import SelfTestOptions, run_self_test

    gates = GateSet.model_validate(
        {
            "CONTRACT-INVARIANTS": {},
            "METADATA-PLAUSIBILITY": {},
            "STRUCTURE": {},
            "STOP-BEHAVIOR": {},
            "PERPLEXITY": {"max_mean_nll": 50},
        }
    )
    options = SelfTestOptions(
        model=fixture_ggufs["llama"],
        ref="fixture-llama",
        output=tmp_path / "out",
        gates=gates,
        defects=("nan-norm", "eos-changed", "tokenizer-dropped", "rope-theta", "bias-dropped"),
        chat=False,
        progress=False,
    )
    result = run_self_test(options)
    caught = {d.defect: d.caught_by for d in result.defects}
    assert result.clean.caught_by == () and result.false_blocks == 0
    assert caught["nan-norm"] == ("CONTRACT-INVARIANTS", "PERPLEXITY")
    assert caught["eos-changed"] == ("STOP-BEHAVIOR",)
    assert caught["tokenizer-dropped"] == ("G0-INTEGRITY",)
    assert caught["rope-theta"] == ()
    assert [d.applicable for d in result.defects][-1] is False  # bias-dropped: llama has none
    assert (result.caught, len(result.planted), result.passed) == (3, 4, False)
    assert "G1-LOAD" in result.gates and "PERPLEXITY" in result.gates
    stored = read_results(tmp_path / "out")
    assert stored is not None and stored.to_json() == result.to_json()
    assert json.loads((tmp_path / "out" / "detection.json").read_text())["summary"] == result.summary()
    text = render_text(result)
    assert "MISSED" in text and "no false block" in text and "3/4" in text
    assert (tmp_path / "out" / "evidence" / "rope-theta.jsonl").is_file()
    assert not (tmp_path / "out" / "copies").exists()  # throwaway copies removed


def test_cli_rejects_an_unknown_defect_in_one_line(fixture_ggufs):
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("apr")),
            "qa",
            str(fixture_ggufs["llama"]),
            "--self-test",
            "--defect",
            "no-such",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "no-such" in run.stderr
    assert "Traceback" not in run.stderr
