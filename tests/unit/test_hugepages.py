"""hugepages: packed-weight memory on transparent huge pages, and the pack cache reading into it."""

import pytest
import torch

from apr.engine import hugepages
from apr.engine.pack_cache import PackStore, read_aligned

MIB = 1 << 20


def huge_kib_under(tensor: torch.Tensor) -> int:
    """AnonHugePages (KiB) of the mapping that holds ``tensor``'s first byte, from /proc/self/smaps."""
    address = tensor.data_ptr()
    inside = False
    for line in open("/proc/self/smaps"):
        first = line.split()[0]
        if "-" in first and ":" not in first:  # a mapping's header line: "start-end perms ..."
            start, end = (int(part, 16) for part in first.split("-"))
            inside = start <= address < end
        elif inside and first == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError("no mapping holds the tensor")


@pytest.fixture
def fresh_setting(monkeypatch):
    """hugepages.enabled() is cached: clear it around a test that changes APR_HUGE_PAGES."""
    hugepages.enabled.cache_clear()
    yield monkeypatch
    hugepages.enabled.cache_clear()


def test_empty_many_gives_separate_aligned_tensors_of_each_shape_and_dtype():
    specs = [((3 * MIB,), torch.uint8), ((5, 7), torch.float32), ((MIB // 2, 3), torch.int16), ((0,), torch.float16)]
    tensors = hugepages.empty_many(specs)
    assert [(tuple(t.shape), t.dtype) for t in tensors] == [spec for spec in specs]
    assert all(t.data_ptr() % hugepages.ALIGN == 0 for t in tensors if t.numel())
    for value, tensor in enumerate(tensors):
        tensor.fill_(value + 1)
    # Filling each left the others as they were: no two overlap.
    assert [int(t.max()) if t.numel() else None for t in tensors] == [1, 2, 3, None]
    assert [int(t.min()) if t.numel() else None for t in tensors] == [1, 2, 3, None]


@pytest.mark.skipif(not hugepages.enabled(), reason="this system gives no transparent huge pages (THP never/absent)")
def test_large_tensors_land_on_huge_pages():
    big = hugepages.empty((16 * MIB,), torch.uint8)
    assert big.data_ptr() % hugepages.HUGE_PAGE == 0
    big.fill_(7)  # first touch: the kernel backs the advised range with 2 MiB pages
    assert huge_kib_under(big) >= 8 * 1024, "the advised mapping got no huge pages"
    # No comparison with the allocator's memory: whether that gets huge pages too depends on the machine (THP
    # ``always`` on some CI machines; under ``madvise``, a heap mapping merged with advised neighbours or
    # collapsed by khugepaged), not on apr.


def test_small_or_switched_off_allocations_are_ordinary_tensors(fresh_setting):
    small = hugepages.empty((1000,), torch.float32)
    assert small.shape == (1000,) and small.dtype == torch.float32
    assert small.untyped_storage().resizable()  # the allocator's, not a mapping of its own
    fresh_setting.setenv("APR_HUGE_PAGES", "0")
    hugepages.enabled.cache_clear()
    assert not hugepages.enabled()
    off = hugepages.empty((8 * MIB,), torch.uint8)
    assert off.shape == (8 * MIB,) and off.untyped_storage().resizable()


@pytest.mark.parametrize("numel", [100, 3 * MIB])  # the allocator's zeros, and a fresh mapping's
def test_zeros_are_zeros(numel):
    zeros = hugepages.zeros((numel,), torch.float32)
    assert zeros.shape == (numel,) and zeros.dtype == torch.float32
    assert int(torch.count_nonzero(zeros)) == 0
    zeros[::4096] = 1.0  # writable, and the pages it touches read back what was written
    assert int(torch.count_nonzero(zeros)) == -(-numel // 4096)


def test_the_kv_cache_is_zeroed_huge_page_memory_on_the_cpu():
    from apr.engine.kv_cache import SequenceCache

    cache = SequenceCache(4, 2, 256, 1024, torch.float32, torch.device("cpu"))  # 8 MiB a tensor
    assert int(torch.count_nonzero(cache.k)) == 0 and int(torch.count_nonzero(cache.v)) == 0
    cache.k.fill_(1.0)
    assert int(torch.count_nonzero(cache.v)) == 0  # separate memory
    if hugepages.enabled():
        assert huge_kib_under(cache.k) >= 2 * 1024


def test_pack_cache_reads_packed_parts_into_huge_pages(tmp_path, monkeypatch):
    monkeypatch.setenv("APR_HOME", str(tmp_path))
    store = PackStore.open("k")
    weights = {"w": torch.randint(0, 255, (8 * MIB,), dtype=torch.uint8), "scale": torch.randn(4096)}
    store.put("layer", weights)
    store.save()
    read = read_aligned(store.path)
    assert torch.equal(read["layer::w"], weights["w"]) and torch.equal(read["layer::scale"], weights["scale"])
    if hugepages.enabled():
        assert huge_kib_under(read["layer::w"]) >= 4 * 1024


@pytest.mark.parametrize(
    "header",
    [
        b'{"t": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}',
        b'{"t": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}',
        b'{"t": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}',
        b'{"t": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 16]}}',
        b'{"t": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}',
    ],
)
def test_a_malformed_header_is_refused_before_any_memory_is_taken(tmp_path, header):
    path = tmp_path / "entry.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(ValueError, match="offsets|dtype"):
        read_aligned(path)


@pytest.mark.parametrize("header", [b"[1, 2]", b'{"t": 5}'])
def test_a_header_that_is_not_a_table_of_tensors_is_refused(tmp_path, header):
    path = tmp_path / "entry.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="header"):
        read_aligned(path)
