"""`load_engine(kv_cache=...)` (`--kv-cache`): f16 reaches the cache the engine writes; refused where it cannot run."""

from __future__ import annotations

import pytest
import torch

from apr.engine import PrefixCache, SamplingParams, load_engine, native
from apr.errors import AprError

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")


@pytest.fixture(scope="module")
def engines(fixture_models):
    path = fixture_models["qwen2"]["gguf"]
    return {
        "default": load_engine(path, device="cpu", compile=False, pack_cache=False),
        "f16": load_engine(path, device="cpu", compile=False, pack_cache=False, kv_cache="f16"),
    }


def cache_after_a_request(engine, ids: list[int]):
    """The KV cache a real request filled (a PrefixCache keeps it when the request ends)."""
    prefix = PrefixCache()
    engine.generate(ids, SamplingParams(max_tokens=3), prefix=prefix)
    assert prefix.cache is not None
    return prefix.cache


def test_f16_reaches_the_cache_a_request_writes_and_float32_stays_the_default(engines):
    assert engines["default"].describe()["kv_cache"] == "float32"
    assert engines["f16"].describe()["kv_cache"] == "float16"
    ids = list(range(3, 43))
    full = cache_after_a_request(engines["default"], ids)
    half = cache_after_a_request(engines["f16"], ids)
    assert (full.k.dtype, full.v.dtype) == (torch.float32, torch.float32)
    assert (half.k.dtype, half.v.dtype) == (torch.float16, torch.float16)
    assert half.nbytes * 2 == full.nbytes
    n = len(ids)
    # Layer 0's keys and values depend on the prompt alone (no attention before them): the fp16 cache holds
    # exactly the float32 cache's numbers rounded to fp16 (the kernels round to nearest even, as .half()).
    assert torch.equal(half.k[0, :, :n], full.k[0, :, :n].half()) and half.k[0, :, :n].abs().sum() > 0
    assert torch.equal(half.v[0, :, :n], full.v[0, :, :n].half())
    # Deeper layers read the rounded cache, so their keys drift from float32's, a little.
    torch.testing.assert_close(half.k[-1, :, :n].float(), full.k[-1, :, :n], rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"numerics": "exact"}, "contradicts --numerics exact"),
        ({"dtype": "bf16"}, r"native CPU kernels \(--dtype bf16"),
        ({"compile": True}, "drop --compile"),
    ],
)
def test_f16_is_refused_in_one_line_where_it_cannot_run(fixture_models, options, message):
    with pytest.raises(AprError, match=message) as refused:
        load_engine(fixture_models["qwen2"]["gguf"], device="cpu", pack_cache=False, kv_cache="f16", **options)
    assert "\n" not in str(refused.value)


def test_an_unknown_cache_type_is_refused(fixture_models):
    with pytest.raises(AprError, match="--kv-cache 'f8': expected one of f32, f16"):
        load_engine(fixture_models["qwen2"]["gguf"], device="cpu", pack_cache=False, kv_cache="f8")  # type: ignore[arg-type]
