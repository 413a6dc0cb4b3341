"""Model partitions: one Dagster partition per model playbook in ``playbooks/models/``."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from apr.errors import AprError

PLAYBOOK_SUFFIX = ".playbook.yaml"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLAYBOOKS_DIR = REPO_ROOT / "playbooks" / "models"


def partition_key(playbook: Path) -> str:
    """The partition key of a playbook file: its name without ``.playbook.yaml``."""
    return playbook.name[: -len(PLAYBOOK_SUFFIX)]


def discover_playbooks(playbooks_dir: Path) -> dict[str, Path]:
    """Map partition key -> playbook path for every ``*.playbook.yaml`` in the directory, sorted."""
    found = {partition_key(path): path for path in sorted(playbooks_dir.glob(f"*{PLAYBOOK_SUFFIX}"))}
    return found


def playbook_for(playbooks_dir: Path, key: str) -> Path:
    """The playbook file behind a partition key, or a one-line error naming what exists."""
    found = discover_playbooks(playbooks_dir)
    if key not in found:
        known = ", ".join(found) or "none"
        raise AprError(
            f"{playbooks_dir}: no playbook for model partition {key!r} (known: {known}); "
            f"add {key}{PLAYBOOK_SUFFIX} or pick a known partition"
        )
    return found[key]


def model_partitions(playbooks_dir: Path = DEFAULT_PLAYBOOKS_DIR) -> dg.StaticPartitionsDefinition:
    """The static partitions of the asset graph, read from the playbook file names."""
    return dg.StaticPartitionsDefinition(list(discover_playbooks(playbooks_dir)))
