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


@pytest.fixture(scope="module")
def llama_self_test(fixture_ggufs, tmp_path_factory):
    """Static gates and perplexity on the llama fixture, as the gates of playbook ``fixture-llama-full``."""
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
        output=tmp_path_factory.mktemp("self-test") / "out",
        gates=gates,
        defects=("nan-norm", "eos-changed", "tokenizer-dropped", "rope-theta", "bias-dropped"),
        chat=False,
        progress=False,
        playbook="fixture-llama-full",
    )
    return options, run_self_test(options)


def test_self_test_reports_catches_misses_and_no_false_block(llama_self_test):
    """rope-theta (1e5 -> 1e4 is plausible for llama, and the fixture has no reference config) is honestly
    reported as missed."""
    from apr.qa.selftest.report import read_results, render_text

    options, result = llama_self_test
    out = options.output
    caught = {d.defect: d.caught_by for d in result.defects}
    assert result.clean.caught_by == () and result.false_blocks == 0
    assert caught["nan-norm"] == ("CONTRACT-INVARIANTS", "PERPLEXITY")
    assert caught["eos-changed"] == ("STOP-BEHAVIOR",)
    assert caught["tokenizer-dropped"] == ("G0-INTEGRITY",)
    assert caught["rope-theta"] == ()
    assert [d.applicable for d in result.defects][-1] is False  # bias-dropped: llama has none
    assert (result.caught, len(result.planted), result.passed) == (3, 4, False)
    assert "G1-LOAD" in result.gates and "PERPLEXITY" in result.gates
    stored = read_results(out)
    assert stored is not None and stored.to_json() == result.to_json()
    assert json.loads((out / "detection.json").read_text())["summary"] == result.summary()
    text = render_text(result)
    assert "MISSED" in text and "no false block" in text and "3/4" in text
    assert (out / "evidence" / "rope-theta.jsonl").is_file()
    assert not list((out / "evidence").glob("*.part"))  # each finished copy's evidence took its final name
    assert not (out / "copies").exists()  # throwaway copies removed


def test_the_evidence_alone_gives_the_same_table_and_playbook(llama_self_test):
    from apr.qa.selftest.report import render_markdown, result_from_evidence

    options, result = llama_self_test
    again = result_from_evidence(options.output, "fixture-llama")
    assert again is not None and again.playbook == "fixture-llama-full"
    assert "layer-order" in again.unmeasured and "nan-norm" not in again.unmeasured and not result.unmeasured
    assert "Rebuilt from evidence" in render_markdown(again) and "Rebuilt" not in render_markdown(result)
    assert [(d.defect, d.caught_by) for d in again.defects] == [
        (d.defect, d.caught_by) for d in result.defects if d.applicable
    ]


def test_a_certification_cites_only_its_own_self_test(llama_self_test, tmp_path):
    """The sentence goes into mqs.json, report.html and models.csv when the self-test beside the evidence measured
    the gates of the playbook behind it; another playbook's, or none, leaves all three silent."""
    import shutil

    from apr.qa import stages
    from apr.qa.evidence import read_evidence
    from apr.qa.reports.certtable import render_index, rows_from_records
    from apr.qa.selftest.report import certification_self_test

    options, result = llama_self_test
    sentence = "this verdict was produced by gates that caught 3/4 planted defects (0 false blocks on the clean copy)"
    # A certification of playbook fixture-llama-full: the clean copy's evidence stands in for its gates' records.
    certifications = tmp_path / "certifications"
    cited, other, bare = (certifications / name for name in ("cited", "other", "bare"))
    for folder in (cited, other, bare):
        folder.mkdir(parents=True)
        shutil.copyfile(options.output / "evidence" / "clean.jsonl", folder / "evidence.jsonl")
    shutil.copytree(options.output, cited / "self-test")
    shutil.copytree(options.output, other / "self-test")
    renamed = json.loads((other / "self-test" / "detection.json").read_text())
    (other / "self-test" / "detection.json").write_text(json.dumps({**renamed, "playbook": "someone-else"}))
    for folder, expected in ((cited, sentence), (other, None), (bare, None)):
        records = read_evidence(folder / "evidence.jsonl").records
        found = certification_self_test(folder, records)
        (row,) = rows_from_records(records, "evidence.jsonl", folder)
        assert row.self_test == (expected or ""), folder.name
        assert (found is not None and found.caught == result.caught) is (expected is not None), folder.name
        stages.report(
            records, stages.score(records), folder, title="t", evidence=folder / "evidence.jsonl", self_test=found
        )
        mqs = json.loads((folder / "mqs.json").read_text())
        html = (folder / "report.html").read_text()
        if expected is None:
            assert "self_test" not in mqs and "planted defects" not in html, folder.name
        else:
            assert mqs["self_test"]["sentence"] == expected and mqs["self_test"]["planted"] == 4
            assert "caught 3/4 planted defects" in html and "self-test/detection.md" in html
            assert "self-test: 3/4 planted defects" in render_index([row])


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


def test_nan_weights_are_evidence_against_the_model_not_a_crash(fixture_ggufs, tmp_path):
    """A NaN in a norm makes every logit NaN: the reply gates record falsified checks (the self-test of
    smollm2:135m once stopped here with the engine's error instead)."""
    from apr.engine import load_engine
    from apr.qa.axes import Format
    from apr.qa.evidence import Outcome
    from apr.qa.gates.golden import golden_checks
    from apr.qa.gates.stop import stop_reply_checks
    from apr.qa.gates.thresholds import GoldenOutputGate, StopBehaviorGate

    copy = read_gguf_copy(fixture_ggufs["llama"])
    defect("nan-norm").plant(copy)
    engine = load_engine(write_gguf_copy(copy, tmp_path / "nan.gguf"), dtype="fp32", pack_cache=False)
    assert engine.tokenizer.has_chat_template  # so the stop gate plans its replies
    checks = [
        *golden_checks(engine, GoldenOutputGate(), True, Format.GGUF),
        *stop_reply_checks(engine, StopBehaviorGate(prompts=("Say hello.",)), True, Format.GGUF),
    ]
    assert [(c.gate.value, c.outcome) for c in checks] == [
        ("GOLDEN-OUTPUT", Outcome.FALSIFIED),
        ("STOP-BEHAVIOR", Outcome.FALSIFIED),
    ]
    assert all("NaN/Inf logits" in c.reason for c in checks)


def test_the_pipeline_renders_the_partitions_own_self_test_else_one_kept_in_the_published_folder(tmp_path):
    from pipelines.assets.certification import self_test_source
    from pipelines.work_root import StageRecord

    def record(**facts) -> StageRecord:
        return StageRecord(asset="self_test", partition="m", fingerprint="f", files={}, facts=facts)

    published = tmp_path / "certifications" / "m"
    own = tmp_path / "work" / "self-test"
    assert self_test_source(record(enabled=False), published) is None  # nothing anywhere: nothing cited
    (published / "self-test").mkdir(parents=True)
    assert self_test_source(record(enabled=False), published) is None  # a folder without detection.json
    (published / "self-test" / "detection.json").write_text("{}")
    assert self_test_source(record(enabled=False), published) == published / "self-test"
    assert self_test_source(record(enabled=True, folder=str(own)), published) == own


def test_a_non_blocking_gate_on_the_clean_copy_is_a_finding_and_a_blocking_one_a_false_block():
    from apr.qa.selftest.report import render_markdown
    from apr.qa.selftest.run import CopyResult, SelfTestResult

    planted = CopyResult("rope-theta", "rope base changed", caught_by=("METADATA-PLAUSIBILITY", "GOLDEN-OUTPUT"))
    flipped = CopyResult("clean", "unmodified copy (the control)", caught_by=("NUMERICS-PARITY",))
    result = SelfTestResult(model="m", gates=("GOLDEN-OUTPUT", "NUMERICS-PARITY"), clean=flipped, defects=[planted])
    assert result.false_blocks == 0 and result.passed and flipped.findings == ("NUMERICS-PARITY",)
    assert result.summary().endswith(
        "0 false block(s) on the clean copy; non-blocking finding(s) there: NUMERICS-PARITY"
    )
    assert "no false block (finding, does not block: NUMERICS-PARITY)" in render_markdown(result)
    blocked = CopyResult("clean", "unmodified copy (the control)", caught_by=("GOLDEN-OUTPUT", "NUMERICS-PARITY"))
    again = SelfTestResult(model="m", gates=result.gates, clean=blocked, defects=[planted])
    assert again.false_blocks == 1 and not again.passed and "FALSE BLOCK by GOLDEN-OUTPUT" in render_markdown(again)
