"""Fetch `hf://ORG/REPO[/FILE]` through huggingface_hub: one GGUF file, or a SafeTensors snapshot."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from apr.errors import HubError
from apr.hub.cache import disk_error
from apr.hub.progress import progress_wanted
from apr.hub.refs import HfRef

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
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        what = "it is not in the local Hugging Face cache" if ref.filename else "listing a repo needs the network"
        return HubError(
            f"cannot fetch {ref.text}: HF_HUB_OFFLINE is set and {what}; "
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


def _copy_out(source: Path, work_dir: Path) -> Path:
    """Copy a file or snapshot out of the Hugging Face cache (its symlinks followed) into ``work_dir``.

    A copy, not a link: the apr cache entry must not share bytes that another tool may change or evict.
    """
    target = work_dir / source.name
    try:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=False, ignore=shutil.ignore_patterns(".cache"))
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
                files = huggingface_hub.HfApi().list_repo_files(ref.repo_id)
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
    return _copy_out(Path(str(fetched)), work_dir)
