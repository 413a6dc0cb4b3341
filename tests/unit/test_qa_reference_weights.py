"""The checks against the published checkpoint's fingerprint: G0 reference-weights and CONTRACT reference-tokenizer
fail on the planted defects they exist for, and pass on the clean fixture and on legitimate re-encodings of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apr.qa.axes import Format
from apr.qa.gates.fingerprint import ModelFingerprint, model_fingerprint
from apr.qa.gates.reference_weights import tokenizer_check, weights_check
from apr.qa.selftest.defects import defect
from apr.qa.selftest.gguf_edit import GgufTensor, read_gguf_copy, write_gguf_copy

# Defects that change weights and still leave a file the strict reader loads (the others stop at G0's parse).
WEIGHT_DEFECTS = ("layer-order", "qk-permutation", "gate-up-swap", "quant-scales", "nan-norm", "attn-norm-zeroed",
                  "ffn-scaled")  # fmt: skip
METADATA_DEFECTS = ("rope-theta", "norm-eps", "eos-changed", "chat-template-broken")


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The qwen2 fixture as a GGUF file and its fingerprint (the role of the published checkpoint)."""
    from apr.formats import load_model
    from apr.formats.fixtures import build_fixture_model
    from apr.formats.gguf_write import write_gguf

    path = write_gguf(build_fixture_model("qwen2"), tmp_path_factory.mktemp("published") / "qwen2.gguf")
    fingerprint = model_fingerprint(load_model(path), "fixture/qwen2", "0" * 64)
    # What the committed JSON holds is what the checks compare with: go through it.
    return path, ModelFingerprint.from_json(json.loads(json.dumps(fingerprint.to_json())))


def planted(path, defect_id, tmp_path):
    from apr.formats import load_model

    copy = read_gguf_copy(path)
    defect(defect_id).plant(copy)
    return load_model(write_gguf_copy(copy, tmp_path / f"{defect_id}.gguf"))


def requantized(path, kind: str, tmp_path):
    """Every tensor dequantized and stored again as Q8_0 (F32 where a row is no whole block) or F16."""
    from gguf import GGMLQuantizationType, quants

    from apr.formats import load_model
    from apr.formats.ggml import FLOAT_TYPES

    copy = read_gguf_copy(path)
    for name, tensor in copy.tensors.items():
        is_float = tensor.ggml_type in FLOAT_TYPES and tensor.data.dtype != np.uint8
        values = (
            np.asarray(tensor.data, dtype=np.float32)
            if is_float
            else quants.dequantize(tensor.data, GGMLQuantizationType(tensor.ggml_type))
        )
        if kind == "f16":
            copy.tensors[name] = GgufTensor(values.astype(np.float16), int(GGMLQuantizationType.F16))
        elif values.ndim == 2 and values.shape[-1] % 32 == 0:
            copy.tensors[name] = GgufTensor(quants.quantize(values, GGMLQuantizationType.Q8_0), 8)
        else:
            copy.tensors[name] = GgufTensor(values, int(GGMLQuantizationType.F32))
    return load_model(write_gguf_copy(copy, tmp_path / f"{kind}.gguf"))


def test_the_clean_copy_passes_both_checks(clean):
    from apr.formats import load_model

    path, fingerprint = clean
    model = load_model(path)
    weights, tokenizer = (
        weights_check(model, Format.GGUF, fingerprint),
        tokenizer_check(model, Format.GGUF, fingerprint),
    )
    assert weights.outcome.value == "corroborated", weights.reason
    assert tokenizer.outcome.value == "corroborated", tokenizer.reason


@pytest.mark.parametrize("kind", ["q8_0", "f16"])
def test_a_legitimate_requantization_passes(clean, kind, tmp_path):
    path, fingerprint = clean
    model = requantized(path, kind, tmp_path)
    assert {t.info.ggml_type for t in model.tensors.values()} <= {0, 1, 8}  # really re-encoded
    check = weights_check(model, Format.GGUF, fingerprint)
    assert check.outcome.value == "corroborated", check.reason


@pytest.mark.parametrize("target", ["apr", "safetensors"])
def test_the_apr_and_safetensors_conversions_pass(clean, target, tmp_path):
    from apr.formats import load_model
    from apr.formats.convert import convert

    path, fingerprint = clean
    out = tmp_path / f"model.{target}"
    convert(path, target, out, report=False)
    model = load_model(out)
    for check in (
        weights_check(model, Format(target), fingerprint),
        tokenizer_check(model, Format(target), fingerprint),
    ):
        assert check.outcome.value == "corroborated", check.reason


@pytest.mark.parametrize("defect_id", WEIGHT_DEFECTS)
def test_reference_weights_fail_on_every_planted_weight_defect(clean, defect_id, tmp_path):
    path, fingerprint = clean
    check = weights_check(planted(path, defect_id, tmp_path), Format.GGUF, fingerprint)
    assert check.outcome.value == "falsified"
    assert check.check == "reference-weights:gguf" and "differ from qwen2.gguf" in check.reason


@pytest.mark.parametrize("defect_id", METADATA_DEFECTS)
def test_reference_weights_pass_where_only_metadata_changed(clean, defect_id, tmp_path):
    """The check is about weights: a metadata defect is the other gates' to catch (no blanket failure)."""
    path, fingerprint = clean
    check = weights_check(planted(path, defect_id, tmp_path), Format.GGUF, fingerprint)
    assert check.outcome.value == "corroborated", check.reason


def test_a_dropped_bias_is_named_missing(clean):
    from apr.formats import load_model

    path, fingerprint = clean
    model = load_model(path)
    del model.tensors["model.layers.0.self_attn.q_proj.bias"]
    check = weights_check(model, Format.GGUF, fingerprint)
    assert check.outcome.value == "falsified" and "q_proj.bias: missing" in check.reason


def test_the_reference_tokenizer_fails_on_a_truncated_vocabulary(tmp_path):
    """On the gemma3 fixture (a SentencePiece vocabulary still reads when cut; the BPE fixtures lose their merges)."""
    from apr.formats import load_model
    from apr.formats.fixtures import build_fixture_model
    from apr.formats.gguf_write import write_gguf

    path = write_gguf(build_fixture_model("gemma3"), tmp_path / "gemma3.gguf")
    fingerprint = model_fingerprint(load_model(path), "fixture/gemma3", "0" * 64)
    assert tokenizer_check(load_model(path), Format.GGUF, fingerprint).outcome.value == "corroborated"
    check = tokenizer_check(planted(path, "vocab-truncated", tmp_path), Format.GGUF, fingerprint)
    assert check.outcome.value == "falsified"
    assert "tokens != published" in check.reason


def test_the_reference_tokenizer_fails_on_same_size_other_tokens(clean, tmp_path):
    """Two token texts swapped: same count, other ids for the fixed texts or another digest."""
    path, fingerprint = clean
    copy = read_gguf_copy(path)
    tokens = list(copy.get("tokenizer.ggml.tokens"))
    tokens[10], tokens[11] = tokens[11], tokens[10]
    copy.set("tokenizer.ggml.tokens", tokens)
    from apr.formats import load_model

    check = tokenizer_check(load_model(write_gguf_copy(copy, tmp_path / "swapped.gguf")), Format.GGUF, fingerprint)
    assert check.outcome.value == "falsified" and "token list differs" in check.reason


def test_committed_fingerprints_name_the_published_files():
    """Each committed fingerprint was taken from the file whose sha256 the hub catalogue publishes."""
    from apr.hub.catalog import load_catalog
    from apr.qa.gates.fingerprint import load_fingerprint
    from apr.qa.gates.reference_config import REFERENCE_CONFIGS

    catalog = load_catalog()
    for reference in REFERENCE_CONFIGS:
        assert reference.fingerprint is not None, reference.repo
        fingerprint = load_fingerprint(reference.fingerprint)
        published = [catalog[ref].sha256 for ref in reference.refs if ref in catalog]
        assert published == [fingerprint.sha256], reference.repo
        assert fingerprint.repo == reference.repo and fingerprint.tokenizer is not None
        assert len(fingerprint.tensors) > 100
