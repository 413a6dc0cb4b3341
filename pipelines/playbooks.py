"""Reading model playbooks through apr.qa: which model a partition certifies."""

from __future__ import annotations

from pathlib import Path

from pipelines.partitions import playbook_for


def load(playbooks_dir: Path, key: str):
    """The validated playbook of a partition (apr.qa's loader: strict, one-line errors)."""
    from apr.qa.playbook import load_playbook

    return load_playbook(playbook_for(playbooks_dir, key))


def model_ref(playbooks_dir: Path, key: str) -> str:
    """The model reference (`smollm2:135m`, `hf://…`, or a path) the partition's playbook names."""
    return str(load(playbooks_dir, key).model.ref)
