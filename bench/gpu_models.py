"""Reassemble the models of bench/gpu_models.txt from the chunks a GPU lease received, verifying each sha256."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

CHUNK_BYTES = 56 * 1024 * 1024


def read_manifest(path: Path) -> list[tuple[str, str, int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, file, size, sha = line.split()
            rows.append((name, file, int(size), sha))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=Path, default=Path("/tmp/chunks"))
    parser.add_argument("--models", type=Path, default=Path("/tmp/models"))
    parser.add_argument("--manifest", type=Path, default=Path(__file__).with_name("gpu_models.txt"))
    args = parser.parse_args()
    args.models.mkdir(parents=True, exist_ok=True)
    present = {int(p.name[1:]) for p in args.chunks.glob("c[0-9][0-9]")}
    offset = 0
    for name, file, size, sha in read_manifest(args.manifest):
        start, end = offset, offset + size
        offset = end
        target = args.models / file
        if target.exists() and target.stat().st_size == size:
            print(f"{name}: {target} already assembled")
            continue
        needed = range(start // CHUNK_BYTES, (end - 1) // CHUNK_BYTES + 1)
        missing = [i for i in needed if i not in present]
        if missing:
            print(f"{name}: waiting for chunks {missing[0]:02d}..{missing[-1]:02d} ({len(missing)} missing)")
            continue
        digest = hashlib.sha256()
        partial = target.with_suffix(".part")
        with partial.open("wb") as out:
            position = start
            while position < end:
                index, within = divmod(position, CHUNK_BYTES)
                with (args.chunks / f"c{index:02d}").open("rb") as chunk:
                    chunk.seek(within)
                    data = chunk.read(min(CHUNK_BYTES - within, end - position))
                out.write(data)
                digest.update(data)
                position += len(data)
        if digest.hexdigest() != sha:
            partial.unlink()
            print(f"{name}: sha256 mismatch, chunks corrupt", file=sys.stderr)
            return 1
        partial.rename(target)
        print(f"{name}: {target} ({size} bytes, sha256 ok)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
