"""Cache housekeeping under $APR_HOME: disk use per model and in all (`list --size`), `rm REF`, `prune`."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from apr.errors import HubError
from apr.hub.cache import HOME_ENV, CachedModel, ModelCache, slug_for
from apr.hub.variants import VARIANT_MANIFEST, variants_of, variants_root

# Caches apr rebuilds on demand, by directory under $APR_HOME: what `list --size` reports besides models.
DERIVED_DIRS = {
    "converted": "converted variants (apr pull --format)",
    "artifacts": "certification conversions (apr certify, apr.qa.artifacts)",
    "engine-cache": "packed weights (rebuilt on the next load)",
    "kernel-cache": "compiled CPU kernels",
    "tmp": "unfinished downloads",
}


def tree_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (symlinks not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    if not path.is_dir():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


@dataclass(frozen=True)
class EntryUsage:
    """One cached model's disk use: its own entry (nothing for a local path: the user's files) and its variants."""

    model: CachedModel
    entry_bytes: int
    variant_bytes: int
    local: bool  # the model file lives outside $APR_HOME (registered in place)

    @property
    def total(self) -> int:
        return self.entry_bytes + self.variant_bytes


@dataclass(frozen=True)
class CacheUsage:
    home: Path
    entries: list[EntryUsage]
    derived: dict[str, int]
    total_bytes: int


def usage(cache: ModelCache) -> CacheUsage:
    entries = []
    for model in cache.entries():
        entry = cache.entry_dir(slug_for(model.ref))
        variants = sum(tree_bytes(p) for p in variants_of(cache, model.sha256))
        entries.append(EntryUsage(model, tree_bytes(entry), variants, not model.path.is_relative_to(entry)))
    derived = {name: tree_bytes(cache.root / name) for name in DERIVED_DIRS}
    return CacheUsage(cache.root, entries, derived, tree_bytes(cache.root))


def find_entry(cache: ModelCache, ref: str) -> tuple[str, CachedModel]:
    """(slug, model) of a cached ref, cached local path or listed path; HubError naming what is cached."""
    text = ref.strip()
    candidates = [text, text.lower()]
    as_path = Path(text).expanduser()
    if as_path.exists():
        candidates.append(str(as_path.resolve()))
    for candidate in dict.fromkeys(candidates):
        model = cache.read(slug_for(candidate))
        if model is not None:
            return slug_for(candidate), model
    for model in cache.entries():
        if str(model.path) == text:
            return slug_for(model.ref), model
    known = ", ".join(m.ref for m in cache.entries()) or "nothing"
    raise HubError(f"'{ref}' is not in the cache (${HOME_ENV}={cache.root}); cached: {known}")


def remove(cache: ModelCache, ref: str) -> tuple[CachedModel, int]:
    """Delete a model's entry and its converted variants; a local model's own files are never touched.

    Returns (the model, bytes freed)."""
    slug, model = find_entry(cache, ref)
    freed = 0
    with cache.lock(slug):
        entry = cache.entry_dir(slug)
        freed += tree_bytes(entry)
        cache.drop(slug)  # manifest first: a half-removed entry never looks valid
        shutil.rmtree(entry)
    still_used = {m.sha256 for m in cache.entries()}
    if model.sha256 not in still_used:
        # apr certify keeps its conversions under artifacts/<sha256[:16]> (apr.qa.artifacts): they go too.
        for variant in [*variants_of(cache, model.sha256), cache.root / "artifacts" / model.sha256[:16]]:
            if not variant.exists():
                continue
            freed += tree_bytes(variant)
            shutil.rmtree(variant)
    return model, freed


STALE_TEMP_S = 3600


@dataclass
class PrunePlan:
    """What `apr prune` removes, with the reason for each path."""

    items: list[tuple[Path, str, int]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(size for _, _, size in self.items)


def plan_prune(cache: ModelCache, *, older_than_days: float) -> PrunePlan:
    """Leftovers and regenerable data: unfinished downloads, broken entries, orphaned or half-written
    variants, and packed weights unused for ``older_than_days`` (0: all of them)."""
    plan = PrunePlan()
    root = cache.root
    tmp = root / "tmp"
    if tmp.is_dir():
        # A pull in progress keeps its temp dir fresh; only an hour-old one is surely abandoned.
        stale = time.time() - STALE_TEMP_S
        plan.items.extend(
            (p, "unfinished download", tree_bytes(p)) for p in sorted(tmp.iterdir()) if p.lstat().st_mtime <= stale
        )
    valid = {slug_for(m.ref) for m in cache.entries()}
    if cache.models_dir.is_dir():
        for entry in sorted(cache.models_dir.iterdir()):
            model = cache.read(entry.name)
            if entry.name not in valid or model is None:
                plan.items.append((entry, "entry without a readable manifest", tree_bytes(entry)))
            elif not model.path.exists():
                plan.items.append((entry, f"its model {model.path} is gone", tree_bytes(entry)))
    live = {m.sha256[:24] for m in cache.entries() if m.path.exists()}
    vroot = variants_root(cache)
    if vroot.is_dir():
        for variant in sorted(vroot.iterdir()):
            if not (variant / VARIANT_MANIFEST).is_file():
                plan.items.append((variant, "half-written conversion", tree_bytes(variant)))
            elif variant.name.rsplit("-", 1)[0] not in live:
                plan.items.append((variant, "conversion of a model no longer cached", tree_bytes(variant)))
    engine = root / "engine-cache"
    if engine.is_dir():
        cutoff = time.time() - older_than_days * 86400
        for packed in sorted(engine.iterdir()):
            if packed.lstat().st_mtime <= cutoff:
                plan.items.append((packed, f"packed weights unused for {older_than_days:g}+ days", tree_bytes(packed)))
    return plan


def apply_prune(plan: PrunePlan) -> None:
    for path, _, _ in plan.items:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
