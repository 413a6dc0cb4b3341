"""Tensors whose memory asks Linux for transparent huge pages: the packed weights decode streams every token.

Why: a decode token reads every packed weight once (1.0 GB for the 1.5B at Q4_K_M), and with 4 KiB pages
that is ~250 000 pages a token, each a TLB miss and a point where the hardware prefetcher stops and starts
over. On 2 MiB pages the same products ran ~7 % faster (bench/README.md, "Huge pages"). Most distributions
set transparent huge pages to ``madvise``, so memory gets them only when asked, before it is first touched.

The tensors read together (a pack-cache entry) share one private anonymous mapping, advised before it is
first written; only its last partial huge page stays in 4 KiB pages, and nothing grows its resident size. Where huge pages cannot be
had (not Linux, THP set to ``never`` or compiled out, ``APR_HUGE_PAGES=0``) the tensors are ordinary ones.
"""

from __future__ import annotations

import functools
import mmap
from pathlib import Path

import torch

from apr.settings import current

HUGE_PAGE = 2 << 20
ALIGN = 64  # each tensor's start within a shared mapping: a cache line, as the kernels' loads want


THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@functools.cache
def enabled() -> bool:
    """Whether huge pages can be asked for here: Linux with THP not ``never``, not switched off by
    ``APR_HUGE_PAGES=0``."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or not current().huge_pages:
        return False
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:  # no such file: THP compiled out
        return False


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU; from two huge pages up, in huge-page memory."""
    return empty_many([(tuple(shape), dtype)])[0]


def zeros(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """``torch.zeros(shape, dtype=dtype)`` on the CPU; from two huge pages up, in huge-page memory (a fresh
    anonymous mapping reads as zeros, so nothing is written until the tensor is used)."""
    mapped = _mapped([(tuple(shape), dtype)])
    return torch.zeros(shape, dtype=dtype) if mapped is None else mapped[0]


def empty_many(specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
    """One empty CPU tensor per ``(shape, dtype)``; together from two huge pages up, in one mapping whose
    pages are advised huge before anything touches them (each tensor 64-byte aligned in it).

    A private anonymous mapping of its own, not the allocator's: malloc may hand back heap memory that is
    already paged in 4 KiB pages, and a shared mapping would be shmem, whose huge pages are a separate
    setting (usually ``never``). One mapping for many tensors leaves only its last partial huge page in
    4 KiB pages, where a mapping each would leave every small tensor and every tail out. The mapping
    starts one huge page early so the tensors can begin on a 2 MiB boundary; that part is never touched,
    so it costs address space only. The tensors keep the mapping alive (as torch.frombuffer does)."""
    mapped = _mapped(specs)
    return [torch.empty(shape, dtype=dtype) for shape, dtype in specs] if mapped is None else mapped


def _mapped(specs: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor] | None:
    """empty_many's tensors in one advised mapping, or None where that does not apply (too small, THP off)."""
    sizes = [torch.Size(shape).numel() * dtype.itemsize for shape, dtype in specs]
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // ALIGN) * ALIGN
    if total < 2 * HUGE_PAGE or not enabled():
        return None
    mapping = mmap.mmap(-1, total + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = -_address(mapping) % HUGE_PAGE
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE, base, total // HUGE_PAGE * HUGE_PAGE)
    except OSError:  # refused although THP is on: ordinary tensors do the same job
        mapping.close()
        return None
    return [
        torch.frombuffer(mapping, dtype=torch.uint8, count=size, offset=base + offset).view(dtype).view(shape)
        if size
        else torch.empty(shape, dtype=dtype)
        for (shape, dtype), size, offset in zip(specs, sizes, offsets)
    ]


def _address(mapping: mmap.mmap) -> int:
    import ctypes

    view = (ctypes.c_char * 1).from_buffer(mapping)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # an exported buffer would keep the mapping from ever being closed
