"""Fetch `hf://ORG/REPO[/FILE]` through huggingface_hub: one GGUF file, or a SafeTensors snapshot."""

from __future__ import annotations

import fnmatch
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apr.errors import HubError
from apr.hub.cache import disk_error
from apr.hub.progress import progress_wanted
from apr.hub.refs import HfRef
from apr.settings import current

# What a SafeTensors checkpoint needs to load and tokenize; skips README, images, other formats.
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "merges.txt", "vocab.txt", "*.jinja"]
PREFERRED_GGUF_QUANT = "q4_k_m"


def choose_gguf(files: list[str], ref: HfRef) -> str | None:
    """The GGUF file to take from a repo listing: the only one, else the Q4_K_M one; None if no GGUF."""
    ggufs = sorted(name for name in files if name.lower().endswith(".gguf"))
    if not ggufs:
        return None
    if len(ggufs) == 1:
        return ggufs[0]
    preferred = [name for name in ggufs if PREFERRED_GGUF_QUANT in name.lower()]
    if len(preferred) == 1:
        return preferred[0]
    shown = ", ".join(ggufs[:6]) + (", …" if len(ggufs) > 6 else "")
    raise HubError(f"{ref.text} holds several GGUF files ({shown}); name one: {ref.text}/FILE")


@contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """huggingface_hub logs each network retry as a warning; the user gets our one line instead."""
    logger = logging.getLogger("huggingface_hub")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _hub_failure(ref: HfRef, err: BaseException) -> HubError:
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if current().hf_offline:
        return HubError(
            f"cannot fetch {ref.text}: HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache; "
            "unset HF_HUB_OFFLINE when online, or pull a registry ref (e.g. smollm2:135m)"
        )
    return HubError(f"cannot fetch {ref.text} from the Hugging Face Hub: {first_line}")


def _silent_tqdm_class() -> type:
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _not_model_files(directory: str, names: list[str]) -> set[str]:
    """copytree filter: keep subdirectories and SNAPSHOT_PATTERNS files (an offline snapshot is unfiltered)."""
    base = Path(directory)
    return {
        name
        for name in names
        if name == ".cache"
        or (not (base / name).is_dir() and not any(fnmatch.fnmatch(name, pattern) for pattern in SNAPSHOT_PATTERNS))
    }


def _repo_files(ref: HfRef) -> list[str]:
    """The repo's file list: from the Hub, or offline from the cached snapshot of its main revision."""
    import huggingface_hub
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return huggingface_hub.HfApi().list_repo_files(ref.repo_id)
    cached = Path(str(huggingface_hub.snapshot_download(ref.repo_id, local_files_only=True)))
    return sorted(p.relative_to(cached).as_posix() for p in cached.rglob("*") if p.is_file())


def _copy_out(source: Path, target: Path) -> Path:
    """Copy a file or snapshot out of the Hugging Face cache (its symlinks followed) into ``work_dir``.

    A copy, not a link: the apr cache entry must not share bytes that another tool may change or evict.
    """
    try:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=False, ignore=_not_model_files)
        else:
            shutil.copyfile(source, target)
    except OSError as err:
        raise disk_error(err, target) from err
    return target


def fetch_hf(ref: HfRef, work_dir: Path, *, progress: bool, refresh: bool = False) -> Path:
    """Fetch through the Hugging Face cache (so offline use works), then copy into ``work_dir``.

    Returns the GGUF (or other single) file, or the SafeTensors snapshot directory, inside ``work_dir``.
    ``refresh`` forces a new download when the copy we had turned out corrupt.
    """
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    # OSError covers offline mode, missing local entries and HTTP errors; HTTPError covers transport
    # failures (DNS, refused); EntryNotFound / validation errors are bad repo or file names.
    failures = (OSError, hf_errors.HTTPError, hf_errors.EntryNotFoundError, hf_errors.HFValidationError)
    bars = None if progress_wanted(progress) else _silent_tqdm_class()
    with _quiet_hub_logs():
        try:
            filename = ref.filename
            files: list[str] = []
            if filename is None:
                files = _repo_files(ref)
                filename = choose_gguf(files, ref)
            if filename is not None:
                fetched = huggingface_hub.hf_hub_download(
                    ref.repo_id, filename, force_download=refresh, tqdm_class=bars
                )
            elif any(name.endswith(".safetensors") for name in files):
                fetched = huggingface_hub.snapshot_download(
                    ref.repo_id, allow_patterns=SNAPSHOT_PATTERNS, force_download=refresh, tqdm_class=bars
                )
            else:
                raise HubError(f"{ref.text} has neither GGUF nor SafeTensors files; name a model repo or file")
        except failures as err:
            raise _hub_failure(ref, err) from err
    fetched_path = Path(str(fetched))
    # A snapshot directory is named by its commit hash; name the copy after the repo instead.
    name = ref.repo_id.split("/")[-1] if fetched_path.is_dir() else fetched_path.name
    return _copy_out(fetched_path, work_dir / name)
