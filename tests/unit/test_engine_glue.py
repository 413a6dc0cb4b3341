"""apr's fused CPU glue kernels (native.rms_norm, rope_neox_, attend_one) against the PyTorch reference ops."""

from __future__ import annotations

import pytest
import torch

from apr.engine import native
from apr.engine.model import RMSNorm, apply_rope, attend_one, mask_bias, rope_tables
from apr.engine.native_model import NativeRMSNorm

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rows,n,offset", [(1, 1536, 0.0), (7, 64, 0.0), (3, 640, 1.0), (12, 256, 1.0), (2, 13, 0.0)])
def test_rms_norm_matches_the_reference_norm(rows, n, offset):
    x, weight = randn(rows, n, seed=n) * 3, randn(n, seed=rows)
    reference = RMSNorm(weight, 1e-6, offset)
    fused = NativeRMSNorm(weight, 1e-6, offset)
    expected, got = reference(x), fused(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("t,heads,d,theta", [(1, 12, 128, 1e6), (9, 4, 64, 1e4), (5, 3, 256, 1e4), (2, 2, 20, 1e4)])
def test_rope_matches_the_reference_rotation(t, heads, d, theta):
    cos, sin = rope_tables(d, theta, 64, 1.0)
    positions = (torch.arange(t) * 7 + 3) % 64  # not 0..t-1 (position 0 does not rotate); a row each
    cos, sin = cos[positions].contiguous(), sin[positions].contiguous()
    x = randn(t, heads, d, seed=d)
    expected = apply_rope(x, cos, sin)
    got = native.rope_neox_(x.clone(), cos, sin)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, x)  # it did rotate


@pytest.mark.parametrize(
    "kv_heads,rep,d,pos,window",
    [
        (2, 6, 128, 0, 0),
        (2, 6, 128, 130, 0),
        (1, 4, 256, 200, 32),
        (3, 3, 64, 9, 0),
        (4, 1, 40, 77, 512),
        (1, 2, 64, 40, 8),
    ],
)
def test_one_token_attention_matches_the_masked_reference(kv_heads, rep, d, pos, window):
    capacity = 256
    keys, values = randn(kv_heads, capacity, d, seed=1), randn(kv_heads, capacity, d, seed=2)
    k_new, v_new = randn(kv_heads, d, seed=3), randn(kv_heads, d, seed=4)
    q = randn(kv_heads * rep, d, seed=5) * 2
    ref_keys, ref_values = keys.clone(), values.clone()
    ref_keys[:, pos], ref_values[:, pos] = k_new, v_new
    index = torch.arange(capacity)
    allowed = (index <= pos) & ((index > pos - window) if window else True)
    expected = attend_one(q.view(kv_heads, rep, d), ref_keys, ref_values, mask_bias(allowed, torch.float32), d**-0.5)
    got = native.attend_one(q, k_new, v_new, keys, values, pos, window, d**-0.5)
    torch.testing.assert_close(got, expected.reshape(kv_heads * rep, d), rtol=1e-5, atol=1e-5)
    # The new key and value were written into the cache, and nothing else was touched.
    assert torch.equal(keys, ref_keys) and torch.equal(values, ref_values)


@pytest.mark.parametrize("kv_heads,rep,d,pos", [(2, 6, 128, 300), (1, 4, 256, 97), (3, 3, 64, 45)])
def test_a_heads_attention_has_the_same_bits_alone_grouped_and_on_any_thread_count(kv_heads, rep, d, pos):
    """Heads sharing a kv head are computed together (each key and value read once for the group) and the
    groups split over threads; a head's numbers depend on neither: equal to that head attending alone."""
    keys, values = randn(kv_heads, 512, d, seed=6), randn(kv_heads, 512, d, seed=7)
    k_new, v_new, q = randn(kv_heads, d, seed=8), randn(kv_heads, d, seed=9), randn(kv_heads * rep, d, seed=10)
    threads = torch.get_num_threads()
    try:
        outs = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            outs.append(native.attend_one(q, k_new, v_new, keys.clone(), values.clone(), pos, 0, d**-0.5))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(out, outs[0]) for out in outs[1:])
    for head in (0, rep * kv_heads - 1):
        g = head // rep
        alone = native.attend_one(
            q[head : head + 1].contiguous(),
            k_new[g : g + 1].contiguous(),
            v_new[g : g + 1].contiguous(),
            keys[g : g + 1].clone(),
            values[g : g + 1].clone(),
            pos,
            0,
            d**-0.5,
        )
        assert torch.equal(alone[0], outs[0][head])


def test_attention_of_a_row_does_not_depend_on_positions_it_may_not_see():
    """Masked positions (the window's past, the future) are skipped, not merely weighted to ~0."""
    keys, values = randn(2, 64, 32, seed=1), randn(2, 64, 32, seed=2)
    q, k_new, v_new = randn(4, 32, seed=3), randn(2, 32, seed=4), randn(2, 32, seed=5)
    a = native.attend_one(q, k_new, v_new, keys.clone(), values.clone(), 20, 8, 0.2)
    keys[:, :13], values[:, :13] = 1e30, float("nan")  # outside the window
    keys[:, 21:], values[:, 21:] = float("nan"), 1e30  # the future
    b = native.attend_one(q, k_new, v_new, keys, values, 20, 8, 0.2)
    assert torch.equal(a, b)


def test_misuse_is_refused_with_a_clear_error():
    keys = torch.zeros(2, 16, 8)
    with pytest.raises(ValueError, match="position 16"):
        native.attend_one(torch.zeros(4, 8), torch.zeros(2, 8), torch.zeros(2, 8), keys, keys.clone(), 16, 0, 1.0)
    with pytest.raises(ValueError, match="contiguous float32"):
        native.rms_norm(torch.zeros(2, 8, dtype=torch.bfloat16), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="scale of shape"):
        native.rms_norm(torch.zeros(2, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="rope"):
        native.rope_neox_(torch.zeros(2, 3, 8), torch.zeros(1, 8), torch.zeros(1, 8))
