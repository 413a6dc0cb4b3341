"""Reading model playbooks through apr.qa: which model a partition certifies, and how."""

from __future__ import annotations

from pathlib import Path

from pipelines.partitions import playbook_for


def load(playbooks_dir: Path, key: str):
    """The validated playbook of a partition (apr.qa's loader: strict, one-line errors)."""
    from apr.qa.playbook import load_playbook

    return load_playbook(playbook_for(playbooks_dir, key))


def model_ref(playbooks_dir: Path, key: str) -> str:
    """What to pull: the playbook's ``model.path`` when set (fixtures), else its ref (`smollm2:135m`)."""
    playbook = load(playbooks_dir, key)
    path = playbook.model_path()
    return str(path) if path is not None else playbook.model.ref
