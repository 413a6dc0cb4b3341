"""apr's AVX2 kernels (apr.engine.native): products against float references, exact batch invariance, layouts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from native_compilers import compiler_refusing, refused_flag

from apr import cpu
from apr.engine import native, quant

pytestmark = pytest.mark.skipif(not native.available(), reason=f"native kernels: {native.unavailable_reason()}")


def q4_weight(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), generator=g)
    scale = torch.rand(n, k // 32, generator=g) * 0.02 + 0.001
    offset = -(torch.rand(n, k // 32, generator=g) * 0.1 + 0.001)
    # The reference uses the fp16-rounded scales the layout stores (exact for GGML's own fp16 scales).
    dense = (q.view(n, k // 32, 32) * scale.half().float()[..., None] + offset.half().float()[..., None]).view(n, k)
    return native.pack_q4(q, scale, offset), dense


def q8_weight(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (n, k), generator=g)
    scale = torch.rand(n, k // 16, generator=g) * 0.01 + 0.0005
    dense = (q.view(n, k // 16, 16) * scale.half().float()[..., None]).view(n, k)
    return native.pack_q8(q, scale), dense


def q4k_bytes(n: int, k: int, seed: int) -> tuple[np.ndarray, torch.Tensor]:
    """Random Q4_K bytes (valid fp16 d/dmin) and their values by gguf-py's dequantization."""
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, k // 256, 144), dtype=np.uint8)
    scales = rng.uniform(0.0005, 0.002, size=(n, k // 256, 2)).astype(np.float16)
    blocks[..., :4] = scales.view(np.uint8).reshape(n, k // 256, 4)
    raw = blocks.reshape(n, -1)
    return raw, torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.Q4_K).reshape(n, k).copy())


def q4k_weight(n: int, k: int, seed: int):
    raw, dense = q4k_bytes(n, k, seed)
    return native.pack_q4k(quant.q4_k_parts(raw, (n, k))), dense


def q4k8_weight(n: int, k: int, seed: int):
    """Q4_K with 8 output rows interleaved."""
    raw, dense = q4k_bytes(n, k, seed)
    return native.pack_q4k8(quant.q4_k_parts(raw, (n, k))), dense


def q6k_bytes(n: int, k: int, seed: int) -> np.ndarray:
    """Random Q6_K bytes with a valid fp16 d per super-block and int8 sub-block scales of either sign."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, k // 256, 210), dtype=np.uint8)
    blocks[..., 208:210] = rng.uniform(0.0002, 0.001, size=(n, k // 256, 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(n, -1)


def q6k_weight(n: int, k: int, seed: int):
    """Random Q6_K packed as q6; the reference is gguf-py's dequantization."""
    from gguf import GGMLQuantizationType, quants

    raw = q6k_bytes(n, k, seed)
    dense = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.Q6_K).reshape(n, k).copy())
    parts = quant.q6_k_parts(raw, (n, k))
    return native.pack_q6(parts.q, parts.sc, parts.d), dense


def q6k8_weight(n: int, k: int, seed: int):
    """Random Q6_K packed with 8 output rows interleaved (q6k8)."""
    from gguf import GGMLQuantizationType, quants

    raw = q6k_bytes(n, k, seed)
    dense = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.Q6_K).reshape(n, k).copy())
    return native.pack_q6k8(quant.q6_k_parts(raw, (n, k))), dense


LAYOUT_MAKERS = [q4_weight, q8_weight, q4k_weight, q4k8_weight, q6k_weight, q6k8_weight]
LAYOUT_IDS = ["q4", "q8", "q4k", "q4k8", "q6", "q6k8"]


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).norm() / ref.norm())


@pytest.mark.parametrize("make", LAYOUT_MAKERS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("n,k,m", [(96, 256, 1), (64, 768, 3), (40, 2048, 9), (256, 1536, 1)])
def test_products_match_the_float_reference(make, n, k, m):
    """Only the int8 quantization of activations separates the kernel from x @ W.T (≈ 0.5 % here)."""
    parts, dense = make(n, k, seed=n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    bias = torch.randn(n)
    y = native.PackedLinear(parts)(x, bias)
    ref = x @ dense.T + bias
    assert y.shape == (m, n)
    assert relative_error(y, ref) < 0.02
    # A wrong layout (e.g. nibble order or scale lanes swapped) is off by ~100 %, far beyond this bound.
    assert relative_error(native.PackedLinear(parts)(x, None), x @ dense.T) < 0.02


@pytest.mark.parametrize("make", LAYOUT_MAKERS, ids=LAYOUT_IDS)
def test_a_row_gets_the_same_bits_alone_in_any_batch_and_thread_count(make):
    """40 rows cover every row group of every build: amx's tiles of 16 rows (from 32 rows on, 9 weight tiles: an
    unpaired one), the 512-bit kernels' 8 and 4 row pairs, a single pair and a row without a partner; the 256-bit
    kernels' 8 and 4 rows and single rows; one row alone takes the one-row kernels (two tiles a vector)."""
    parts, _ = make(72, 768, seed=3)
    layer = native.PackedLinear(parts)
    x = torch.randn(40, 768, generator=torch.Generator().manual_seed(9))
    alone = torch.cat([layer(x[i : i + 1].contiguous(), None) for i in range(40)])
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            assert torch.equal(layer(x, None), alone)
            assert torch.equal(layer(x[3:8].contiguous(), None), alone[3:8])
            assert torch.equal(layer(x[2:18].contiguous(), None), alone[2:18])
            assert torch.equal(layer(x[1:36].contiguous(), None), alone[1:36])
    finally:
        torch.set_num_threads(threads)


def test_q4_k_parts_reproduce_gguf_dequantization_exactly():
    from gguf import GGMLQuantizationType, quants

    _, dense = q4k_weight(8, 512, seed=5)
    rng = np.random.default_rng(5)  # the same bytes again, to rebuild w from the parts
    blocks = rng.integers(0, 256, size=(8, 2, 144), dtype=np.uint8)
    blocks[..., :4] = rng.uniform(0.0005, 0.002, size=(8, 2, 2)).astype(np.float16).view(np.uint8).reshape(8, 2, 4)
    parts = quant.q4_k_parts(blocks.reshape(8, -1), (8, 512))
    d = parts.d.float().repeat_interleave(8, dim=1)[..., None]
    dmin = parts.dmin.float().repeat_interleave(8, dim=1)[..., None]
    w = d * parts.sc.float()[..., None] * parts.q.view(8, 16, 32).float() - dmin * parts.m.float()[..., None]
    expected = quants.dequantize(blocks.reshape(8, -1), GGMLQuantizationType.Q4_K).reshape(8, 512)
    assert torch.allclose(w.view(8, 512), torch.from_numpy(expected), rtol=0, atol=1e-7)
    assert torch.allclose(w.view(8, 512), dense)


def test_q6_k_parts_reproduce_gguf_dequantization_exactly():
    from gguf import GGMLQuantizationType, quants

    raw = q6k_bytes(8, 512, seed=7)
    parts = quant.q6_k_parts(raw, (8, 512))
    assert int(parts.q.max()) <= 63 and parts.sc.dtype == torch.int8
    w = (parts.d.repeat_interleave(16, dim=1) * parts.sc.float())[..., None] * (parts.q.view(8, 32, 16).float() - 32)
    expected = quants.dequantize(raw, GGMLQuantizationType.Q6_K).reshape(8, 512)
    assert torch.equal(w.view(8, 512), torch.from_numpy(expected))
    with pytest.raises(ValueError, match="K % 256"):
        native.pack_q6(parts.q[:, :384], parts.sc[:, :24], parts.d[:, :1])


def test_q6_k_and_q8_0_keep_their_integer_values_exactly():
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(0)
    for ggml_type, (values, nbytes, d_at) in {quant.Q6_K: (256, 210, 208), quant.Q8_0: (32, 34, 0)}.items():
        n, k = 8, 512
        blocks = rng.integers(0, 256, size=(n, k // values, nbytes), dtype=np.uint8)
        d = rng.uniform(0.001, 0.05, size=(n, k // values, 1)).astype(np.float16)
        blocks[..., d_at : d_at + 2] = d.view(np.uint8).reshape(n, k // values, 2)
        raw = blocks.reshape(n, -1)
        q, scale = quant.int8_groups_from_raw(raw, ggml_type, (n, k))
        assert int(q.abs().max()) <= 128
        expected = quants.dequantize(raw, GGMLQuantizationType(ggml_type)).reshape(n, k)
        ours = (q.view(n, k // 16, 16).float() * scale[..., None]).view(n, k)
        assert torch.equal(ours, torch.from_numpy(expected))


def test_scales_fp16_cannot_hold_are_refused_not_rounded_silently():
    q = torch.zeros(4, 32, dtype=torch.int64)
    with pytest.raises(native.ScaleRangeError):
        native.pack_q4(q, torch.full((4, 1), 1e-7), torch.zeros(4, 1))
    with pytest.raises(native.ScaleRangeError):
        native.pack_q8(torch.zeros(4, 32, dtype=torch.int64), torch.full((4, 2), 1e6))
    native.pack_q4(q, torch.full((4, 1), 0.00123), torch.zeros(4, 1))  # an ordinary scale packs


def test_mismatched_inputs_are_refused():
    parts, _ = q4_weight(16, 256, seed=1)
    layer = native.PackedLinear(parts)
    with pytest.raises(ValueError, match="512 input features for a q4 weight of K 256"):
        layer(torch.randn(2, 512), None)
    with pytest.raises(ValueError, match="float32"):
        layer(torch.randn(2, 256, dtype=torch.float64), None)
    with pytest.raises(ValueError, match="float32"):
        layer(torch.randn(256, 2).T, None)  # not contiguous


def test_float_weights_with_tiny_groups_still_pack_and_stay_accurate():
    """bf16 checkpoints hold groups far below fp16's normal range; they must not fall back to dense fp32."""
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(32, 256, generator=g) * 0.02
    weight[:8] *= 1e-4  # rows of ~2e-6 weights: scales in fp16's subnormal range
    weight[8:10] = 0.0
    q, scale = native.int8_groups_of_16(weight)
    parts = native.pack_q8(q, scale)  # would raise ScaleRangeError if the scales were not fp16 values
    dense = (q.view(32, 16, 16).float() * scale[..., None]).view(32, 256)
    for rows in (slice(0, 8), slice(10, 32)):
        assert relative_error(dense[rows], weight[rows]) < 0.02
    assert torch.equal(dense[8:10], weight[8:10])
    x = torch.randn(3, 256, generator=g)
    assert relative_error(native.PackedLinear(parts)(x, None), x @ dense.T) < 0.02


def test_the_kernels_share_torchs_openmp_runtime():
    """One OpenMP runtime in the process: the kernels link the libgomp torch loaded, not the system's."""
    import json

    probe = (
        "import json; from apr.engine import native; assert native.available(), native.unavailable_reason(); "
        "print(json.dumps([str(p) for p in native.openmp_runtimes_in_process()]))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runtimes = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(runtimes) == 1, runtimes
    assert Path(torch.__file__).parent in Path(runtimes[0]).parents  # torch's own, where torch bundles one


LAYOUT_BUILDERS = {
    "q4": q4_weight,
    "q8": q8_weight,
    "q4k": q4k_weight,
    "q4k8": q4k8_weight,
    "q6": q6k_weight,
    "q6k8": q6k8_weight,
}


def q6k_extreme_bytes(n: int, k: int) -> np.ndarray:
    """Q6_K bytes at the edge of the VNNI kernels' exact float scaling: every sub-block scale -128, every q 0
    (q - 32 = -32) in even output rows and 63 (q - 32 = 31) in odd ones, so with every activation at +-127 a
    half-block's scaled sum reaches 16 * 32 * 127 * 128 and a block's two halves ~2^24."""
    blocks = np.zeros((n, k // 256, 210), dtype=np.uint8)
    blocks[1::2, :, :192] = 0xFF
    blocks[..., 192:208] = 0x80
    blocks[..., 208:210] = np.full((n, k // 256, 1), 0.001, dtype=np.float16).view(np.uint8)
    return blocks.reshape(n, -1)


def products_of_every_layout() -> dict[str, torch.Tensor]:
    """Every layout's products for 1, 3, 8, 13, 19 and 40 activation rows (the row groups of every build: amx
    takes 16 rows a tile from 32 rows on, then the 512-bit pairs the rest), seeded; the tiled layouts also with
    an odd number of tiles (amx pairs tiles), and q6k8 at its extreme values, activations of one magnitude (all
    quantized to +-127) and mixed signs."""
    out = {}
    for name, build in LAYOUT_BUILDERS.items():
        for n in (64, 24) if name in ("q4k8", "q6k8") else (64,):
            parts, _ = build(n, 512, seed=3)
            layer = native.PackedLinear(parts)
            bias = torch.randn(n, generator=torch.Generator().manual_seed(n))
            for rows in (1, 3, 8, 13, 19, 40):
                x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows)) * 2
                out[f"{name}-{n}-{rows}"] = layer(x, None)
                out[f"{name}-{n}-{rows}-bias"] = layer(x, bias)
    extreme = native.PackedLinear(native.pack_q6k8(quant.q6_k_parts(q6k_extreme_bytes(64, 512), (64, 512))))
    for rows in (1, 3, 19, 40):
        signs = torch.randint(0, 2, (rows, 512), generator=torch.Generator().manual_seed(rows)) * 2 - 1
        out[f"q6k8-extreme-{rows}"] = extreme(3.0 * torch.ones(rows, 512), None)
        out[f"q6k8-extreme-mixed-{rows}"] = extreme(3.0 * signs.float(), None)
    return out


# (kv heads, query heads a kv head, head size, rows, first position, window): every grouping of the 512-bit
# attention (query vectors in pairs, 3 pairs at a time, an odd vector doubled), head sizes with a tail past
# the last 64 elements (80) and past the last 8 (68), a window, rows on top of a cache.
ATTENTION_SHAPES = (
    (2, 6, 128, 37, 0, 0),
    (1, 7, 64, 21, 9, 0),
    (3, 5, 80, 19, 4, 12),
    (2, 1, 68, 13, 0, 0),
    (1, 4, 128, 6, 30, 0),
)


def attention_of_every_shape() -> dict[str, torch.Tensor]:
    """The prompt attention (attend_run) and a decode step (attend_one) at every ATTENTION_SHAPES shape, over
    float32 and fp16 caches, seeded."""
    out = {}
    for kv_heads, rep, d, rows, pos0, window in ATTENTION_SHAPES:
        for kv_dtype in (torch.float32, torch.float16):
            g = torch.Generator().manual_seed(rows * d + rep)
            q = torch.randn(rows + 1, kv_heads * rep, d, generator=g)
            k_new, v_new = (
                torch.randn(rows + 1, kv_heads, d, generator=g),
                torch.randn(rows + 1, kv_heads, d, generator=g),
            )
            keys = torch.randn(kv_heads, pos0 + rows + 1, d, generator=g).to(kv_dtype)
            values = torch.randn(kv_heads, pos0 + rows + 1, d, generator=g).to(kv_dtype)
            name = f"attention-{kv_heads}x{rep}-{d}-{rows}-{pos0}-{window}-{kv_dtype}"
            out[f"{name}-run"] = native.attend_run(
                q[:rows], k_new[:rows], v_new[:rows], keys, values, pos0, window, 0.1
            )
            out[f"{name}-one"] = native.attend_one(
                q[rows], k_new[rows], v_new[rows], keys, values, pos0 + rows, window, 0.1
            )
    return out


def outputs_of_every_kernel() -> dict[str, torch.Tensor]:
    """What the variant test compares between builds: every product layout and the attention kernels."""
    return {**products_of_every_layout(), **attention_of_every_shape()}


def products_of_build(variant: str, out: Path) -> dict[str, torch.Tensor]:
    """outputs_of_every_kernel() computed by the ``variant`` build, forced by APR_NATIVE_VARIANT in a process
    of its own (a process builds and loads one variant)."""
    env = {**os.environ, "APR_NATIVE_VARIANT": variant}
    done = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == variant  # the build that ran is the one asked for
    return torch.load(out)


@pytest.fixture(scope="module")
def avx2_products(tmp_path_factory) -> dict[str, torch.Tensor]:
    return products_of_build("avx2", tmp_path_factory.mktemp("avx2") / "avx2.pt")


@pytest.mark.parametrize("variant", [v.name for v in cpu.supported_variants() if v.name != "avx2"])
def test_every_kernel_variant_this_cpu_runs_gives_the_avx2_bits(variant, avx2_products, tmp_path):
    """Each variant computes the same integer sums as the AVX2 build, and the same float operations on each
    output (avx512vnni's 512-bit kernels included, at every row group): every layout's products, and the
    attention of prompts and of decode steps (512-bit in the AVX-512 builds), equal bit for bit."""
    results = products_of_build(variant, tmp_path / f"{variant}.pt")
    assert results.keys() == avx2_products.keys()
    for key, expected in avx2_products.items():
        assert torch.equal(results[key], expected), key


def test_python_m_native_names_the_variant_that_runs_here():
    """The README's way to ask which kernels run: `python -m apr.engine.native` prints the build, exit 0."""
    done = subprocess.run([sys.executable, "-m", "apr.engine.native"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == cpu.choose_variant(os.environ.get("APR_NATIVE_VARIANT") or None)[0].name


@pytest.mark.parametrize(
    ("value", "reported"), [("1024", "1024 B ahead"), ("0", "no weight prefetch"), ("1000", "2048 B ahead")]
)
def test_the_prefetch_distance_is_a_build_flag_the_kernels_report(value, reported):
    """APR_STREAM_AHEAD builds kernels that prefetch that far ahead, and the kernel description (apr --version,
    bench JSON) names the distance the loaded build uses; a value that is not a multiple of 64 keeps the default."""
    env = {**os.environ, "APR_STREAM_AHEAD": value}
    done = subprocess.run(
        [sys.executable, "-m", "apr.engine.native"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert reported in done.stdout


def test_a_variant_the_compiler_cannot_build_gives_way_to_the_next(tmp_path):
    """A compiler that refuses the best variant's flags (e.g. a gcc older than 11 and -mamx-tile): the kernels
    load in the next variant this CPU runs, with a one-line warning, instead of not at all."""
    supported = cpu.supported_variants()
    if len(supported) < 2:
        pytest.skip(f"this CPU runs only {supported[0].name if supported else 'no'} variant: nothing to fall back to")
    best, following = supported[0], supported[1]
    compiler = compiler_refusing(tmp_path, refused_flag(best, following))
    env = {**os.environ, "CC": str(compiler), "APR_HOME": str(tmp_path / "home")}
    env.pop("APR_NATIVE_VARIANT", None)
    probe = "from apr.engine import native; print(native.variant())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [following.name]
    warning = [line for line in done.stderr.splitlines() if line.startswith("apr: native kernels:")]
    assert len(warning) == 1 and f"building the {best.name} kernels failed" in warning[0], done.stderr
    assert warning[0].endswith(f"using {following.name}")


def test_variant_choice_follows_the_cpu_flags():
    base = frozenset({"avx2", "fma", "f16c"})
    assert [v.name for v in cpu.supported_variants(base)] == ["avx2"]
    avx512 = base | {"avx512_vnni", "avx512vl", "avx512bw"}
    assert [v.name for v in cpu.supported_variants(avx512)] == ["avx512vnni", "avx2"]
    # AMX (Sapphire Rapids): the tile build first, when the OS grants the tile state; else avx512vnni.
    tiles = avx512 | {"amx_tile", "amx_int8"}
    assert [v.name for v in cpu.supported_variants(tiles, granted=True)] == ["amx", "avx512vnni", "avx2"]
    assert [v.name for v in cpu.supported_variants(tiles, granted=False)] == ["avx512vnni", "avx2"]
    assert [v.name for v in cpu.supported_variants(base | {"amx_tile", "amx_int8"}, granted=True)] == ["avx2"]
    chosen, why = cpu.choose_variant("amx", tiles, granted=False)
    assert chosen is None and "does not grant" in why
    # Without AVX512BW (the 512-bit byte and word operations) no 512-bit kernels.
    assert [v.name for v in cpu.supported_variants(base | {"avx512_vnni", "avx512vl"})] == ["avx2"]
    assert cpu.choose_variant(None, base | {"avx_vnni"})[0].name == "avxvnni"
    # Both VNNI forms (Sapphire Rapids): the build with 512-bit kernels first.
    assert cpu.choose_variant(None, base | {"avx_vnni", "avx512_vnni", "avx512vl", "avx512bw"})[0].name == "avx512vnni"
    assert cpu.choose_variant(None, frozenset({"avx2", "fma"}))[0] is None  # no F16C: no build at all
    chosen, why = cpu.choose_variant("avx512vnni", base)
    assert chosen is None and "cannot run" in why
    assert cpu.choose_variant("sse", base)[0] is None


if __name__ == "__main__":  # the probe the variant test runs in a process of its own
    torch.save(outputs_of_every_kernel(), sys.argv[1])
    print(native.variant())
