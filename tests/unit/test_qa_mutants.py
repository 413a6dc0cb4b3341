"""Planted defects: a model built from the fixtures with one defect is BLOCKED by the gate that should catch it.

Each test runs the real `apr certify` pipeline in-process (artifacts, every model-level gate, evidence,
MQS, reports) on a mutant checkpoint. The one matrix cell is driven through the stand-in CLI
(tests/unit/qa_exec_stand_in_apr.py): the cells are not what these tests are about, the model-level
gates are, and the unmutated baseline proves the same playbook is not BLOCKED without the defect.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from apr.qa.evidence import Outcome
from apr.qa.gates.catalog import GateId
from apr.qa.score import Status

STAND_IN = (sys.executable, str(Path(__file__).with_name("qa_exec_stand_in_apr.py")))


def write_playbook(folder: Path, model: Path, fmt: str, arch: str) -> Path:
    playbook = folder / "mutant.playbook.yaml"
    playbook.write_text(
        textwrap.dedent(f"""\
        apr_playbook: 1
        name: mutant-{arch}
        tier: smoke
        model: {{ref: "mutant-{arch}", path: "{model}", architecture: {arch}}}
        matrix: {{formats: [{fmt}], backends: [cpu], modalities: [run]}}
        scenarios:
          pools: {{arithmetic: 0}}
          prompts: [{{text: "What is 2+2?", oracles: [{{name: non_empty}}]}}]
        gates:
          CONTRACT-INVARIANTS:
          METADATA-PLAUSIBILITY:
          STRUCTURE:
        """)
    )
    return playbook


def certify(folder: Path, model: Path, fmt: str, arch: str):
    from apr.qa.certify import CertifyOptions
    from apr.qa.certify import certify as run_certify

    playbook = write_playbook(folder, model, fmt, arch)
    return run_certify(
        CertifyOptions(
            playbook=playbook, output=folder / "out" / "run", progress=False, apr_argv=STAND_IN, calibrate=False
        )
    )


def failing(result, gate: GateId) -> list:
    from apr.qa.evidence import read_evidence

    return [r for r in read_evidence(result.evidence).records if r.gate is gate and r.outcome is Outcome.FALSIFIED]


def replace_tensor(model, name: str, values: np.ndarray) -> None:
    """Swap one tensor of an in-memory model for float32 ``values`` (same name, F32 storage)."""
    from apr.formats.ggml import F32, encode_float, tensor_nbytes
    from apr.formats.model import TensorInfo
    from apr.formats.tensor_source import StoredTensor

    shape = tuple(values.shape)
    info = TensorInfo(name=name, shape=shape, ggml_type=F32, nbytes=tensor_nbytes(F32, shape))
    data = encode_float(values, F32)
    model.tensors[name] = StoredTensor(info, lambda: data)


def write_gguf_mutant(model, path: Path) -> Path:
    from apr.formats.gguf_write import write_gguf

    return write_gguf(model, path)


def write_st_mutant(model, folder: Path) -> Path:
    from apr.formats.safetensors_write import write_safetensors_dir

    return write_safetensors_dir(model, folder, dtype="f32")


@pytest.fixture()
def qwen2():
    from apr.formats.fixtures import build_fixture_model

    return build_fixture_model("qwen2")


def test_baseline_fixture_is_not_blocked(tmp_path, qwen2):
    result = certify(tmp_path, write_gguf_mutant(qwen2, tmp_path / "ok.gguf"), "gguf", "qwen2")
    assert result.mqs.status is not Status.BLOCKED, result.mqs.blockers
    for gate in (GateId.G0_INTEGRITY, GateId.CONTRACT_INVARIANTS, GateId.METADATA_PLAUSIBILITY, GateId.STRUCTURE):
        assert not failing(result, gate)


def test_zeroed_q_bias_is_blocked_by_structure(tmp_path, qwen2):
    name = "model.layers.1.self_attn.q_proj.bias"
    replace_tensor(qwen2, name, np.zeros(qwen2.tensors[name].info.shape, dtype=np.float32))
    result = certify(tmp_path, write_gguf_mutant(qwen2, tmp_path / "zero-q-bias.gguf"), "gguf", "qwen2")
    caught = failing(result, GateId.STRUCTURE)
    assert [r.check for r in caught] == ["qkv-bias"]
    assert name in caught[0].reason
    assert result.mqs.status is Status.BLOCKED and result.exit_code == 1
    assert any(line.startswith("STRUCTURE") for line in result.mqs.blockers)


def test_wrong_rope_theta_is_blocked_by_structure_and_metadata(tmp_path, qwen2):
    qwen2.config = dataclasses.replace(qwen2.config, rope_theta=10_000.0)
    result = certify(tmp_path, write_gguf_mutant(qwen2, tmp_path / "rope.gguf"), "gguf", "qwen2")
    assert [r.check for r in failing(result, GateId.STRUCTURE)] == ["rope-theta"]
    assert [r.check for r in failing(result, GateId.METADATA_PLAUSIBILITY)] == ["rope-theta"]
    assert "10000" in failing(result, GateId.STRUCTURE)[0].reason
    assert result.mqs.status is Status.BLOCKED


def test_transposed_embedding_is_blocked_by_integrity(tmp_path, qwen2):
    from safetensors.numpy import load_file, save_file

    folder = write_st_mutant(qwen2, tmp_path / "st")
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.embed_tokens.weight"] = np.ascontiguousarray(tensors["model.embed_tokens.weight"].T)
    save_file(tensors, weights)
    result = certify(tmp_path, folder, "safetensors", "qwen2")
    caught = failing(result, GateId.G0_INTEGRITY)
    assert [r.check for r in caught] == ["parse:safetensors"]
    assert "embed_tokens" in caught[0].reason
    assert result.mqs.status is Status.BLOCKED and result.mqs.score == 0  # a gateway failure zeroes the MQS


def test_dropped_tokenizer_is_blocked(tmp_path, qwen2):
    folder = write_st_mutant(qwen2, tmp_path / "st")
    (folder / "tokenizer.json").unlink()
    result = certify(tmp_path, folder, "safetensors", "qwen2")
    caught = failing(result, GateId.G0_INTEGRITY)
    assert [r.check for r in caught] == ["parse:safetensors"]
    assert "tokenizer.json" in caught[0].reason
    assert result.mqs.status is Status.BLOCKED and result.mqs.score == 0


def test_zeroed_norm_weights_are_blocked_by_structure(tmp_path):
    from apr.formats.fixtures import build_fixture_model

    llama = build_fixture_model("llama")
    name = "model.layers.0.input_layernorm.weight"
    replace_tensor(llama, name, np.zeros(llama.tensors[name].info.shape, dtype=np.float32))
    result = certify(tmp_path, write_gguf_mutant(llama, tmp_path / "norm.gguf"), "gguf", "llama")
    assert [r.check for r in failing(result, GateId.STRUCTURE)] == ["norms"]
    assert result.mqs.status is Status.BLOCKED


def test_mutant_evidence_is_reported(tmp_path, qwen2):
    qwen2.config = dataclasses.replace(qwen2.config, rope_theta=10_000.0)
    result = certify(tmp_path, write_gguf_mutant(qwen2, tmp_path / "rope.gguf"), "gguf", "qwen2")
    summary = json.loads((result.output / "mqs.json").read_text())
    assert summary["status"] == "BLOCKED"
    assert "STRUCTURE" in (result.output / "junit.xml").read_text()
    assert "BLOCKED" in (result.output / "models.csv").read_text()  # -o DIR: its tables cover DIR alone
