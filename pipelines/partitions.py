"""Model partitions: one Dagster partition per model playbook in ``playbooks/models/``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dagster as dg

from apr.errors import AprError

PLAYBOOK_SUFFIX = ".playbook.yaml"
# Tier suffixes of playbook file names (apr.qa.axes.Tier); `smollm2-135m-mvp` certifies model `smollm2-135m`.
TIER_SUFFIXES = ("-quick", "-smoke", "-mvp", "-standard", "-full")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PLAYBOOKS_DIR = REPO_ROOT / "playbooks" / "models"


def _stem(playbook: Path) -> str:
    return playbook.name[: -len(PLAYBOOK_SUFFIX)]


def _model_name(stem: str) -> str:
    for suffix in TIER_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def discover_playbooks(playbooks_dir: Path) -> dict[str, Path]:
    """Map partition key -> playbook for every ``*.playbook.yaml``, sorted by key.

    The key is the model name: the file name without ``.playbook.yaml`` and its tier suffix
    (``smollm2-135m-mvp.playbook.yaml`` -> ``smollm2-135m``). When several tiers of one model are
    present, the lowest tier (in ``TIER_SUFFIXES`` order) keeps the model name, so `smollm2-135m` stays the
    model's everyday certification, and the others keep their full stem (``smollm2-135m-full``).
    """
    stems = {_stem(path): path for path in sorted(playbooks_dir.glob(f"*{PLAYBOOK_SUFFIX}"))}
    names = Counter(_model_name(stem) for stem in stems)
    lowest = {name: min((s for s in stems if _model_name(s) == name), key=_tier_rank) for name in names}
    keyed = {(_model_name(stem) if lowest[_model_name(stem)] == stem else stem): path for stem, path in stems.items()}
    return dict(sorted(keyed.items()))


def _tier_rank(stem: str) -> int:
    ranks = [rank for rank, suffix in enumerate(TIER_SUFFIXES) if stem.endswith(suffix)]
    return ranks[0] if ranks else -1  # a playbook named without a tier comes first


def playbook_for(playbooks_dir: Path, key: str) -> Path:
    """The playbook file behind a partition key, or a one-line error naming what exists."""
    found = discover_playbooks(playbooks_dir)
    if key not in found:
        known = ", ".join(found) or "none"
        raise AprError(
            f"{playbooks_dir}: no playbook for model partition {key!r} (known: {known}); "
            f"add {key}-<tier>{PLAYBOOK_SUFFIX} or pick a known partition"
        )
    return found[key]


def model_partitions(playbooks_dir: Path = DEFAULT_PLAYBOOKS_DIR) -> dg.StaticPartitionsDefinition:
    """The static partitions of the asset graph, read from the playbook file names."""
    return dg.StaticPartitionsDefinition(list(discover_playbooks(playbooks_dir)))
