"""Playbooks: our format, the upstream format, tier templates, the committed playbooks, errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from apr.errors import AprError
from apr.qa.axes import Backend, Format, Modality, Tier
from apr.qa.gates.catalog import GATEWAYS, GateId
from apr.qa.oracles.base import OracleName
from apr.qa.playbook import SCHEMA_PATH, FailurePolicy, load_playbook, load_template, schema_text
from apr.qa.scenarios import PromptStyle

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "playbooks" / "models"
TEMPLATES = REPO / "playbooks" / "templates"
UPSTREAM = Path(__file__).with_name("qa_core_data") / "upstream-demo-1.5b-mvp.playbook.yaml"

MINIMAL = """\
apr_playbook: 1
name: tiny-mvp
tier: mvp
model:
  ref: smollm2:135m
"""


def write(tmp_path: Path, text: str, name: str = "p.playbook.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_committed_schema_equals_the_generated_one():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), "run: python -m apr.qa.playbook --write-schema"


@pytest.mark.parametrize("name", ["quick", "smoke", "mvp", "standard", "full"])
def test_every_tier_template_loads(name):
    assert load_template(TEMPLATES / f"{name}.yaml").tier == Tier(name)


def test_qwen_mvp_is_the_18_cell_matrix():
    playbook = load_playbook(MODELS / "qwen2.5-coder-1.5b-mvp.playbook.yaml")
    cells = playbook.cells()
    assert len(cells) == 18 and playbook.tier is Tier.MVP
    assert {(c.format, c.backend, c.modality) for c in cells} == {
        (f, b, m) for f in Format for b in Backend for m in Modality
    }
    assert len({c.key for c in cells}) == 18
    # CPU and GPU twins get the same prompt; the nine format×modality combos do not all share one prompt.
    by_combo = {(c.format, c.modality, c.backend): c.prompt.id for c in cells}
    assert all(by_combo[(f, m, Backend.CPU)] == by_combo[(f, m, Backend.GPU)] for f in Format for m in Modality)
    assert len({c.prompt.id for c in cells}) >= 8
    assert set(GATEWAYS) <= set(playbook.gates.enabled())
    assert playbook.gates.throughput.min_tok_s[Backend.CPU] == 5.0


def test_gemma_is_a_base_model_without_chat_cells_and_says_why():
    playbook = load_playbook(MODELS / "gemma3-270m-mvp.playbook.yaml")
    assert not playbook.model.chat_template
    assert Modality.CHAT not in {c.modality for c in playbook.cells()}
    assert "base model" in playbook.matrix.omitted[Modality.CHAT]
    assert playbook.scenarios.style is PromptStyle.COMPLETION
    assert all(OracleName.STOPS_ON_EOS not in p.oracle_names for p in playbook.prompts())


def test_smollm2_playbook_loads():
    playbook = load_playbook(MODELS / "smollm2-135m-mvp.playbook.yaml")
    assert playbook.model.ref == "smollm2:135m" and len(playbook.cells()) == 18


def test_cells_are_reproducible_from_playbook_and_seed(tmp_path):
    first = load_playbook(MODELS / "qwen2.5-coder-1.5b-mvp.playbook.yaml")
    second = load_playbook(MODELS / "qwen2.5-coder-1.5b-mvp.playbook.yaml")
    assert [c.model_dump() for c in first.cells()] == [c.model_dump() for c in second.cells()]
    other_seed = first.model_copy(update={"scenarios": first.scenarios.model_copy(update={"seed": 43})})
    assert [p.text for p in other_seed.prompts()] != [p.text for p in first.prompts()]


def test_minimal_playbook_gets_defaults_and_all_gateways(tmp_path):
    playbook = load_playbook(write(tmp_path, MINIMAL))
    assert playbook.gates.enabled() == GATEWAYS
    assert len(playbook.cells()) == 3 * 2 * 3
    assert playbook.source_format == "apr" and playbook.unused_keys == ()


def test_model_path_override_resolves_relative_to_the_playbook(tmp_path):
    playbook = load_playbook(write(tmp_path, MINIMAL + "  path: models/m.gguf\n"))
    assert playbook.model_path() == tmp_path / "models" / "m.gguf"
    override = playbook.with_model_path(tmp_path / "x.gguf")
    assert override.model_path() == tmp_path / "x.gguf" and override.source == playbook.source


def test_g4_thresholds_reach_every_garbage_oracle(tmp_path):
    text = MINIMAL + (
        "scenarios:\n  pools: {arithmetic: 2, facts: 1}\n  prompts:\n"
        "    - {text: hi, oracles: [{name: garbage}]}\n"
        "    - {text: ho, oracles: [{name: garbage, max_repetition_ratio: 0.7}]}\n"
        "gates:\n  G4-QUALITY: {max_repetition_ratio: 0.2}\n"
    )
    prompts = load_playbook(write(tmp_path, text)).prompts()
    ratios = [p.spec_for(OracleName.GARBAGE).max_repetition_ratio for p in prompts]
    assert ratios == [0.2, 0.2, 0.2, 0.2, 0.7]


@pytest.mark.parametrize(
    "text, expected",
    [
        (MINIMAL + "colour: blue\n", r"p\.playbook\.yaml:6: colour: unknown key"),
        (MINIMAL + "matrix:\n  formats: [gguf, onnx]\n", r":7: matrix\.formats\.1: Input should be"),
        (MINIMAL.replace("  ref: smollm2:135m\n", "  name: x\n"), r":5: model\.name: unknown key"),
        (MINIMAL + "gates:\n  G9-NOPE: {}\n", r":7: gates\.G9-NOPE: unknown key"),
        (MINIMAL + "gates:\n  THROUGHPUT: {min_tok_s: {cpu: -1}}\n", r":7: gates\.THROUGHPUT\.min_tok_s: .*positive"),
        (MINIMAL + "execution:\n  timeout_s: 0\n", r":7: execution\.timeout_s: Input should be greater than 0"),
        ("apr_playbook: 1\nname: x\ntier: mvp\n", r":1: model: required field missing"),
        (MINIMAL + "matrix:\n  modalities: [run, run]\n", r":7: matrix\.modalities: .*twice"),
        (MINIMAL + "scenarios:\n  pools: {arithmetic: 0, empty: 1}\n", r":6: scenarios: .*no prompt with an oracle"),
    ],
)
def test_schema_errors_name_file_line_and_field(tmp_path, text, expected):
    with pytest.raises(AprError, match=expected):
        load_playbook(write(tmp_path, text))


def test_yaml_syntax_errors_and_duplicates_name_the_line(tmp_path):
    with pytest.raises(AprError, match=r"p\.playbook\.yaml:3:\d+: invalid YAML"):
        load_playbook(write(tmp_path, "apr_playbook: 1\nname: [x\ntier: mvp\n"))
    with pytest.raises(AprError, match=r":4: duplicate key 'tier' \(first at line 3\)"):
        load_playbook(write(tmp_path, "apr_playbook: 1\nname: x\ntier: mvp\ntier: full\n"))
    with pytest.raises(AprError, match="not a playbook"):
        load_playbook(write(tmp_path, "hello: world\n"))
    with pytest.raises(AprError, match="not found"):
        load_playbook(tmp_path / "missing.yaml")


def test_chat_cells_on_a_model_without_chat_template_are_rejected(tmp_path):
    with pytest.raises(AprError, match="chat_template is false"):
        load_playbook(write(tmp_path, MINIMAL + "  chat_template: false\n"))


def test_extends_merges_and_errors_point_into_the_right_file(tmp_path):
    write(tmp_path, "apr_playbook: 1\ntier: smoke\nmatrix:\n  formats: [gguf]\n  backends: [cpux]\n", "base.yaml")
    child = write(tmp_path, MINIMAL.replace("tier: mvp\n", "") + "extends: base.yaml\n")
    with pytest.raises(AprError, match=r"base\.yaml:5: matrix\.backends\.0"):
        load_playbook(child)
    write(tmp_path, "apr_playbook: 1\ntier: smoke\nmatrix:\n  formats: [gguf]\n  backends: [cpu]\n", "base.yaml")
    playbook = load_playbook(child)
    assert playbook.tier is Tier.SMOKE and playbook.matrix.formats == (Format.GGUF,)
    write(tmp_path, "apr_playbook: 1\nextends: loop2.yaml\ntier: mvp\n", "loop1.yaml")
    write(tmp_path, "apr_playbook: 1\nextends: loop1.yaml\ntier: mvp\n", "loop2.yaml")
    with pytest.raises(AprError, match="cycle"):
        load_template(tmp_path / "loop1.yaml")


def test_upstream_playbook_loads_and_reports_every_unused_key_by_name():
    playbook = load_playbook(UPSTREAM)
    assert playbook.source_format == "upstream"
    assert playbook.model.ref == "hf://Demo/Demo-Coder-1.5B-Instruct"
    assert playbook.matrix.formats == (Format.SAFETENSORS, Format.APR, Format.GGUF)
    assert playbook.scenarios.seed == 7 and playbook.execution.timeout_s == 90.0
    assert playbook.execution.failure_policy is FailurePolicy.STOP_ON_FIRST_P0
    assert playbook.tier is Tier.MVP
    assert playbook.gates.g4_quality.max_repetition_ratio == 0.25 and playbook.gates.g4_quality.min_unique_chars == 8
    assert playbook.gates.throughput.min_tok_s == {Backend.CPU: 5.0, Backend.GPU: 50.0}
    assert GateId.CONTRACT_INVARIANTS in playbook.gates.enabled()
    prompts = playbook.prompts()
    assert [p.text for p in prompts] == ["What is 15-7?", "def fibonacci(n):", "List three colors."]
    assert OracleName.ARITHMETIC in prompts[0].oracle_names and OracleName.ARITHMETIC not in prompts[2].oracle_names
    unused = {entry.split(" (line")[0] for entry in playbook.unused_keys}
    assert {
        "model.quantizations",
        "model.size_category",
        "model.expected_hidden_dim",
        "kernel_profile",
        "oracles.0",
        "profile_ci.warmup",
        "metadata.author",
    } <= unused
    assert "kernel_profile (line 30)" in playbook.unused_keys
    assert not unused & {"name", "model.hf_repo", "test_matrix.seed", "test_matrix.prompts", "metadata.tier"}
    assert len(playbook.cells()) == 18


def test_upstream_schema_errors_point_at_the_upstream_line(tmp_path):
    text = UPSTREAM.read_text(encoding="utf-8").replace("backends: [cpu, gpu]", "backends: [cpu, tpu]")
    with pytest.raises(AprError, match=r":21: matrix\.backends\.1"):
        load_playbook(write(tmp_path, text, "up-mvp.playbook.yaml"))


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.playbook.yaml")), ids=lambda p: p.name)
def test_committed_playbooks_validate_against_the_json_schema(path):
    import json

    import jsonschema

    from apr.qa.playbook_yaml import read_with_extends

    data, _ = read_with_extends(path)
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "surprise": 1}, json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
