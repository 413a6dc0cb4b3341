"""`apr certify --tier`: a model playbook's own settings laid over another tier's template."""

from __future__ import annotations

from pathlib import Path

import pytest

from apr.errors import AprError
from apr.qa.axes import Modality, Tier
from apr.qa.certify import with_tier
from apr.qa.playbook import load_playbook
from apr.qa.scenarios import PromptStyle

MODELS = Path(__file__).resolve().parents[2] / "playbooks" / "models"


def test_same_tier_is_the_playbook_itself():
    playbook = load_playbook(MODELS / "qwen2.5-coder-1.5b-mvp.playbook.yaml")
    assert with_tier(playbook, Tier.MVP) is playbook


def test_another_tier_takes_the_template_matrix_and_keeps_the_model_settings():
    playbook = load_playbook(MODELS / "gemma3-270m-mvp.playbook.yaml")
    smoke = with_tier(playbook, Tier.SMOKE)
    assert smoke.tier is Tier.SMOKE and smoke.name == "gemma3-270m-smoke"
    assert smoke.model == playbook.model
    assert smoke.scenarios.style is PromptStyle.COMPLETION  # a base model stays a base model
    assert Modality.CHAT not in smoke.matrix.modalities
    assert smoke.source == playbook.source


def test_tier_of_an_upstream_playbook_is_refused_with_one_line(tmp_path):
    upstream = tmp_path / "qwen2.5-coder-1.5b-mvp.playbook.yaml"
    upstream.write_text(
        "name: qwen-coder-mvp\nversion: 1.0.0\nmodel: {hf_repo: Qwen/Qwen2.5-Coder-1.5B-Instruct}\n"
        "test_matrix: {modalities: [run], backends: [cpu], scenario_count: 1}\n"
    )
    playbook = load_playbook(upstream)
    with pytest.raises(AprError, match="apr's format"):
        with_tier(playbook, Tier.SMOKE if playbook.tier is not Tier.SMOKE else Tier.MVP)
