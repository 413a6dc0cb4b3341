"""On-disk cache of converted weights (packed matrices, dense embeddings of float checkpoints) so later loads skip repacking."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError

from apr.engine import hugepages
from apr.settings import current

# Bump when the packed layout or the conversion changes: old entries are then simply not found
# (and, being the least recently used, are the first the size limit removes).
PACK_VERSION = 4  # 4: quantized embeddings are no longer stored dense (weights.BlockRows)


def apr_home() -> Path:
    return current().home


def cache_key(source_path: Path, policy_tag: str) -> str | None:
    """Key from the checkpoint's identity and the conversion; None when the path is neither file nor folder.

    Identity is (resolved path, size, mtime) of the file, or of every file in a checkpoint folder
    (SafeTensors shards, config, tokenizer), so rewriting any of them misses the cache."""
    path = Path(source_path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
    else:
        return None
    identity = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    ident = json.dumps([PACK_VERSION, identity, policy_tag, torch.__version__])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


class PackStore:
    """Converted tensors by canonical tensor name; filled while building, written once (temp file + rename)."""

    def __init__(self, path: Path, loaded: dict[str, dict[str, torch.Tensor]] | None) -> None:
        self.path = path
        self.loaded = loaded or {}
        self.fresh: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, key: str) -> PackStore:
        """The entry for ``key``; an entry that cannot be read counts as a miss and is rewritten on save."""
        path = apr_home() / "engine-cache" / f"{key}.safetensors"
        if not path.exists():
            return cls(path, None)
        try:
            flat = _load_entry(path)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):  # truncated, or not written by us
            return cls(path, None)
        os.utime(path)  # recency for the size limit: entries in use are the last to go
        loaded: dict[str, dict[str, torch.Tensor]] = {}
        for flat_name, tensor in flat.items():
            name, _, part = flat_name.rpartition("::")
            loaded.setdefault(name, {})[part] = tensor
        return cls(path, loaded)

    @property
    def hit(self) -> bool:
        return bool(self.loaded)

    def get(self, name: str) -> dict[str, torch.Tensor] | None:
        return self.loaded.get(name)

    def put(self, name: str, parts: dict[str, torch.Tensor]) -> None:
        if not self.hit:
            self.fresh[name] = parts

    def save(self) -> None:
        """Write what was converted; a failed write leaves no partial file behind."""
        if self.hit or not self.fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flat = {f"{name}::{part}": t for name, parts in self.fresh.items() for part, t in parts.items()}
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            write_streaming(tmp, flat)
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        prune(self.path.parent, keep=self.path)


_DTYPES = {
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
}


def write_streaming(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A SafeTensors file written tensor by tensor: safetensors' ``save_file`` first builds the whole
    file in memory, which on the 1.5B doubled the first load's peak memory (5.1 GB)."""
    names = {dtype: code for code, dtype in _DTYPES.items()}
    header: dict[str, dict] = {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in names:
            raise ValueError(f"{name}: the pack cache does not store {tensor.dtype}")
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with path.open("wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                handle.write(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().data)


def _load_entry(path: Path) -> dict[str, torch.Tensor]:
    """A cache entry: the native kernels' packed weights read into aligned memory, the rest mapped.

    The rest is mostly the dequantized embedding, of which a step reads a few rows: mapped, only those
    pages are ever read, so it costs no resident memory up front."""
    from safetensors.torch import load_file

    from apr.engine.native import LAYOUTS

    packed_parts = {part for parts in LAYOUTS.values() for part in parts}
    aligned = read_aligned(path, lambda name: name.rpartition("::")[2] in packed_parts)
    return {**load_file(str(path)), **aligned}


def read_aligned(path: Path, wanted=lambda name: True) -> dict[str, torch.Tensor]:
    """The tensors of a SafeTensors file that ``wanted(name)`` picks, read into fresh memory (hugepages.empty_many).

    Not safetensors' ``load_file``: its tensors are views into one mapping of the file at offsets that
    are not even 32-byte aligned, so the kernels' vector loads split cache lines and walk the page
    cache's 4 KiB pages (decode measured ~15 % slower); fresh tensors are aligned anonymous memory, on
    huge pages where the system gives them, and read() leaves no file pages mapped. ValueError when the
    file is malformed."""
    tensors: dict[str, torch.Tensor] = {}
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 <= header_len <= size - 8:
            raise ValueError(f"{path}: not a SafeTensors file")
        header = json.loads(handle.read(header_len))
        if not isinstance(header, dict) or not all(isinstance(spec, dict) for spec in header.values()):
            raise ValueError(f"{path}: not a SafeTensors header")
        header.pop("__metadata__", None)
        data_start = 8 + header_len
        picked = [(name, spec) for name, spec in header.items() if wanted(name)]
        for name, spec in picked:  # all checked before any memory is taken for them
            dtype, shape, offsets = _DTYPES.get(spec.get("dtype")), spec.get("shape"), spec.get("data_offsets")
            if dtype is None:
                raise ValueError(f"{path}: tensor {name!r} has dtype {spec.get('dtype')!r}")
            if (
                not isinstance(shape, list)
                or not all(isinstance(dim, int) and dim >= 0 for dim in shape)
                or not isinstance(offsets, list)
                or len(offsets) != 2
                or offsets[1] - offsets[0] != torch.Size(shape).numel() * dtype.itemsize
                or not 0 <= offsets[0] <= offsets[1]
                or data_start + offsets[1] > size
            ):
                raise ValueError(f"{path}: tensor {name!r} does not match its offsets")
        picked.sort(key=lambda item: item[1]["data_offsets"][0])  # read in file order
        fresh = hugepages.empty_many([(tuple(spec["shape"]), _DTYPES[spec["dtype"]]) for _, spec in picked])
        for (name, spec), tensor in zip(picked, fresh):
            begin, end = spec["data_offsets"]
            handle.seek(data_start + begin)
            if end > begin and handle.readinto(tensor.view(-1).view(torch.uint8).numpy().data) != end - begin:
                raise ValueError(f"{path}: tensor {name!r} is truncated")
            tensors[name] = tensor
    return tensors


def limit_bytes() -> int:
    return int(current().engine_cache_gb * 1e9)


def prune(folder: Path, keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Remove the least recently used entries until the folder fits ``limit`` bytes; ``keep`` always stays."""
    limit = limit_bytes() if limit is None else limit
    entries = []
    for entry in folder.glob("*.safetensors"):
        try:
            stat = entry.stat()
        except FileNotFoundError:  # removed by a concurrent prune
            continue
        entries.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, entry in sorted(entries):
        if total <= limit:
            break
        if keep is not None and entry == keep:
            continue
        entry.unlink(missing_ok=True)
        total -= size
        removed.append(entry)
    return removed
