"""apr's AVX2 CPU kernels (qgemm.c products, glue.c norms/RoPE/attention, layer.c whole decode layers,
dequant.c embedding rows): built once with cc, called through ctypes.

The kernels keep quantized weights in their stored precision and quantize activations per block of 32
to int8, as ggml does on CPUs; see qgemm.c for the layouts and the batch-invariance argument. They are
used on x86-64 CPUs that PyTorch reports as AVX2 or better, when a C compiler is present; otherwise
``unavailable_reason()`` says why and the engine keeps PyTorch's weight-only kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from apr.cpu import VARIANTS, Variant, choose_variant, supported_variants
from apr.engine import quant
from apr.settings import current

SOURCES = tuple(Path(__file__).with_name(name) for name in ("qgemm.c", "glue.c", "layer.c", "dequant.c"))
HEADERS = (Path(__file__).with_name("apr_native.h"),)
# Version of the packed layouts and of which layout each GGML type gets: part of the pack-cache key, so a
# change here repacks cached models. glue.c, layer.c and dequant.c have their own (apr_glue_abi, ...).
ABI = 8
QGEMM_ABI = 9  # the products' calling convention (apr_qgemm_abi); ABI above is only the packed layouts
GLUE_ABI = 4
LAYER_ABI = 4
DEQUANT_ABI = 1
BLOCK = 32  # activation block (and q4 weight block)
KGROUP = 128  # K is padded to a multiple of this in every packed layout
CFLAGS = ("-O3", "-std=c11", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-fPIC", "-shared")


# fp16 keeps scales exactly for Q4_0/Q4_1/Q8_0 (stored as fp16) and within 2^-11 for K-quants (d * sc);
# tiny scales land in fp16's subnormal range, where precision drops: a tensor whose scales would be
# off by more than this (relative) is refused, and the caller picks another layout.
MAX_SCALE_ROUNDING = 2.0**-9


def padded(k: int) -> int:
    return -(-k // KGROUP) * KGROUP


def _cache_dir() -> Path:
    return current().home / "kernel-cache"


def openmp_runtimes_in_process() -> list[Path]:
    """The GNU OpenMP runtimes (libgomp*) mapped into this process, from /proc/self/maps (Linux)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    found = {
        line.split()[-1]
        for line in maps.read_text().splitlines()
        if "/" in line and Path(line.split()[-1]).name.startswith("libgomp")
    }
    return sorted(Path(path) for path in found)


def openmp_runtime_in_process() -> Path | None:
    """The libgomp torch loaded (torch is imported above), which the kernels should share; None if none."""
    runtimes = openmp_runtimes_in_process()
    return runtimes[0] if len(runtimes) == 1 else None


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """The loaded kernel library, or None and the reason it cannot be used here. Without APR_NATIVE_VARIANT, a
    build the compiler cannot make (e.g. amx with a gcc older than 11) gives way to the next variant."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"the native kernels need x86-64 (this is {platform.machine()})"
    settings = current()
    variant, why = choose_variant(settings.native_variant)
    if variant is None:
        return None, why
    if not settings.native_kernels:
        return None, "disabled by APR_NATIVE_KERNELS=0"
    compiler = settings.compiler or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "no C compiler (cc/gcc) to build them"
    candidates = [variant] if settings.native_variant else supported_variants()
    failures: list[str] = []
    for candidate in candidates:
        lib, why = _build(candidate, compiler, settings.stream_ahead)
        if lib is not None:
            if failures:
                print(f"apr: native kernels: {'; '.join(failures)}; using {candidate.name}", file=sys.stderr)
            return _declare(lib), ""
        failures.append(why)
    return None, failures[-1]


def _build(variant: Variant, compiler: str, stream_ahead: int | None) -> tuple[ctypes.CDLL | None, str]:
    """The ``variant`` build of the kernels (compiled once into the kernel cache, then loaded), or None and why;
    ``stream_ahead`` (APR_STREAM_AHEAD) overrides the kernels' prefetch distance."""
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    runtime = openmp_runtime_in_process()
    # Linked against the OpenMP runtime torch already loaded (by its own file), so the process keeps one
    # runtime and one thread pool: a second libgomp would size, spin and bind its threads separately.
    link = [str(runtime), f"-Wl,-rpath,{runtime.parent}"] if runtime is not None else []
    flags = (*CFLAGS, *variant.flags, *((f"-DAPR_STREAM_AHEAD={stream_ahead}",) if stream_ahead is not None else ()))
    tag = hashlib.sha256(source + " ".join((*flags, *link)).encode() + compiler.encode()).hexdigest()[:16]
    target = _cache_dir() / f"qgemm-{variant.name}-{tag}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            command = [compiler, *flags, *map(str, SOURCES), *link, "-o", tmp, "-lm"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
                return None, f"building the {variant.name} kernels failed: {first}"
            os.replace(tmp, target)  # atomic: a concurrent build of the same source writes the same bytes
        finally:
            Path(tmp).unlink(missing_ok=True)
    lib = ctypes.CDLL(str(target))
    found = (lib.apr_qgemm_abi(), lib.apr_glue_abi(), lib.apr_layer_abi(), lib.apr_dequant_abi())
    if found != (QGEMM_ABI, GLUE_ABI, LAYER_ABI, DEQUANT_ABI):
        return None, f"{target} has ABI {found}, expected {(QGEMM_ABI, GLUE_ABI, LAYER_ABI, DEQUANT_ABI)}"
    if lib.apr_qgemm_variant() != variant.code:  # e.g. a compiler that ignored the variant's flags
        return None, f"{target} built as variant {lib.apr_qgemm_variant()}, expected {variant.name}"
    granted = lib.apr_amx_enable()  # 0 where the build has no tiles; cpu.tiles_granted() asked already
    if granted != 0:
        return None, f"the {variant.name} kernels cannot use the AMX tiles (arch_prctl: errno {granted})"
    return lib, ""


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """``lib`` with the argument and result types of the functions apr calls."""
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.apr_products.argtypes = [p, i32, p, i64, p, i32]
    lib.apr_products.restype = i32
    lib.apr_rms_norm.argtypes = [p, p, i64, i64, f32, p]
    lib.apr_rms_norm.restype = None
    lib.apr_rope_neox.argtypes = [p, i64, i64, i64, p, p]
    lib.apr_rope_neox.restype = None
    lib.apr_attend_one.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, i64, f32, p, i32]
    lib.apr_attend_one.restype = i32
    lib.apr_attend_run.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, i64, i64, f32, p, i32]
    lib.apr_attend_run.restype = i32
    lib.apr_decode_layer.argtypes = [ctypes.POINTER(_Layer), i64, p, i64, p, p, p, p, p, p, i32, i32]
    lib.apr_decode_layer.restype = i32
    lib.apr_decode_layers.argtypes = [p, p, i64, p, i64, p, p, p, p, p, p, p, p, i32, i32]
    lib.apr_decode_layers.restype = i32
    lib.apr_dequantize_rows.argtypes = [p, i64, i64, i64, i64, p, i64, p]
    lib.apr_dequantize_rows.restype = i32
    return lib


class _Weight(ctypes.Structure):
    """layer.c's apr_weight."""

    _fields_ = [
        ("layout", ctypes.c_int64),
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("offset", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("kpad", ctypes.c_int64),
    ]


LAYER_WEIGHTS = ("q", "k", "v", "o", "gate", "up", "down")
LAYER_NORMS = ("input_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm", "q_norm", "k_norm")
LAYER_SIZES = ("hidden", "heads", "kv_heads", "head_dim", "ffn", "window", "gelu")


class _Layer(ctypes.Structure):
    """layer.c's apr_layer."""

    _fields_ = (
        [(name, _Weight) for name in LAYER_WEIGHTS]
        + [(name, ctypes.c_void_p) for name in LAYER_NORMS]
        + [("eps", ctypes.c_double), ("attn_scale", ctypes.c_double)]
        + [(name, ctypes.c_int64) for name in LAYER_SIZES]
    )


def available() -> bool:
    return _library()[0] is not None


def unavailable_reason() -> str:
    return _library()[1]


def _lib() -> ctypes.CDLL:
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(reason)
    return lib


class ScaleRangeError(ValueError):
    """Scales that fp16 cannot hold to its normal precision; the caller picks another layout."""


# Layout name -> the parts it is stored as (the first is the integer matrix, the second has one row per output;
# the tiled layouts q4k8 and q6k8 are one tensor with a row per tile of 8 outputs).
LAYOUTS = {
    "q4": ("q4", "q4_scale", "q4_offset"),
    "q8": ("q8", "q8_scale"),
    "q6": ("q6", "q6_sc", "q6_d"),
    "q4k": ("q4k", "q4k_scmin", "q4k_dm"),
    "q4k8": ("q4k8",),
    "q6k8": ("q6k8",),
}
# Tiled layouts: bytes per tile of 8 rows and super-block of 256 (qgemm.c).
TILE_BYTES = {"q4k8": 1184, "q6k8": 1680}
LAYOUT_CODE = {"q4": 4, "q6": 6, "q8": 8, "q4k": 40, "q4k8": 41, "q6k8": 61}  # apr_native.h's enum


def layout_of(parts: dict[str, torch.Tensor]) -> str:
    for layout, names in LAYOUTS.items():
        if set(parts) == set(names):
            return layout
    raise ValueError(f"no native layout has the parts {sorted(parts)}")


def _padded_k(layout: str, weight: torch.Tensor) -> int:
    """K (padded) from the integer matrix's row bytes: 8, 6 or 4 bits a weight (tiled: super-blocks of 256)."""
    if layout in TILE_BYTES:
        return weight.shape[1] // TILE_BYTES[layout] * 256
    return {"q8": weight.shape[1], "q6": weight.shape[1] * 4 // 3}.get(layout, weight.shape[1] * 2)


def _out_features(layout: str, tensors: tuple[torch.Tensor, ...]) -> int:
    return tensors[0].shape[0] * 8 if layout in TILE_BYTES else tensors[1].shape[0]


def _weight(layout: str, k: int, kpad: int, pointers: tuple[int, ...], bias: torch.Tensor | None, n: int) -> _Weight:
    """apr_native.h's apr_weight for a weight with input features ``k``; ValueError when K does not fit the layout."""
    if (k if layout == "q4k" or layout in TILE_BYTES else padded(k)) != kpad:
        raise ValueError(f"{k} input features for a {layout} weight of K {kpad}")
    if bias is not None:
        _check_f32("bias", bias)
    parts = list(pointers) + [None] * (3 - len(pointers))
    return _Weight(LAYOUT_CODE[layout], *parts, None if bias is None else bias.data_ptr(), n, k, kpad)


def _multiply(weight: _Weight, x: torch.Tensor) -> torch.Tensor:
    m, k = x.shape
    if x.dtype != torch.float32 or not x.is_contiguous() or k != weight.k:
        raise ValueError(f"expected contiguous float32 [M, {weight.k}] input, got {x.dtype} {tuple(x.shape)}")
    y = torch.empty(m, weight.n, dtype=torch.float32)
    status = _lib().apr_products(
        ctypes.byref(ctypes.pointer(weight)),
        1,
        x.data_ptr(),
        m,
        ctypes.byref(ctypes.c_void_p(y.data_ptr())),
        torch.get_num_threads(),
    )
    if status:
        raise (
            MemoryError(f"no memory for the activations of a {m} x {k} product")
            if status == -1
            else RuntimeError(f"apr_products failed ({status})")
        )
    return y


class PackedLinear:
    """A weight in one of the native ``LAYOUTS``, ready to multiply: the tensors plus their addresses.

    The addresses stay valid because this object holds the tensors and nothing replaces them; a layer
    moved to another device must build a new one."""

    def __init__(self, parts: dict[str, torch.Tensor]) -> None:
        self.layout = layout_of(parts)
        self.tensors = tuple(parts[name] for name in LAYOUTS[self.layout])
        if any(not t.is_contiguous() or t.device.type != "cpu" for t in self.tensors):
            raise ValueError("packed weights must be contiguous CPU tensors")
        self.n = _out_features(self.layout, self.tensors)
        self.kpad = _padded_k(self.layout, self.tensors[0])
        self._pointers = tuple(t.data_ptr() for t in self.tensors)
        self._weights: dict[tuple[int, int], _Weight] = {}  # by (K, bias address): built once, reused every call

    def weight(self, k: int, bias: torch.Tensor | None) -> _Weight:
        """The C description of this weight multiplying inputs of ``k`` features, plus ``bias``."""
        key = (k, 0 if bias is None else bias.data_ptr())
        found = self._weights.get(key)
        if found is None:
            found = self._weights[key] = _weight(self.layout, k, self.kpad, self._pointers, bias, self.n)
        return found

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """float32 ``x [M, K]`` (contiguous) -> float32 ``[M, N]``."""
        return _multiply(self.weight(x.shape[-1], bias), x)


@torch.library.custom_op("apr::native_linear", mutates_args=())
def native_linear(x: torch.Tensor, layout: str, weights: list[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
    """``PackedLinear``'s product as a PyTorch operator, so torch.compile can trace a graph around it
    (eager code calls ``PackedLinear`` directly: the dispatcher costs more than the small products)."""
    weight = _weight(
        layout,
        x.shape[-1],
        _padded_k(layout, weights[0]),
        tuple(t.data_ptr() for t in weights),
        bias,
        _out_features(layout, tuple(weights)),
    )
    return _multiply(weight, x)


@native_linear.register_fake
def _native_linear_shape(x, layout, weights, bias):
    return x.new_empty(x.shape[0], _out_features(layout, tuple(weights)))


def _check_f32(what: str, *tensors: torch.Tensor) -> None:
    # The cheapest complete test (t.device.type builds an object per call; these run ~10 times a layer).
    if not all(t.dtype is torch.float32 and t.is_cpu and t.is_contiguous() for t in tensors):
        raise ValueError(f"{what} needs contiguous float32 CPU tensors")


KV_DTYPES = (torch.float32, torch.float16)  # what the attention kernels read a KV cache as (glue.c)


def _check_kv(what: str, *caches: torch.Tensor) -> bool:
    """Whether the caches are fp16 (else float32): contiguous CPU tensors, all of one of KV_DTYPES."""
    dtype = caches[0].dtype
    if dtype not in KV_DTYPES or not all(c.dtype is dtype and c.is_cpu and c.is_contiguous() for c in caches):
        raise ValueError(f"{what} needs contiguous CPU KV caches, all float32 or all float16")
    return dtype is torch.float16


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * rsqrt(mean(x**2, -1) + eps) * scale`` over the last dimension (glue.c)."""
    _check_f32("rms_norm", x, scale)
    n = x.shape[-1]
    if scale.shape != (n,):
        raise ValueError(f"rms_norm: scale of shape {tuple(scale.shape)} for rows of {n}")
    out = torch.empty_like(x)
    _lib().apr_rms_norm(x.data_ptr(), scale.data_ptr(), x.numel() // n, n, eps, out.data_ptr())
    return out


def rope_neox_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``x [T, heads, d]`` in place by the NEOX rule with ``cos``/``sin`` ``[T, d]``; returns x."""
    _check_f32("rope", x, cos, sin)
    t, heads, d = x.shape
    if cos.shape != (t, d) or sin.shape != (t, d) or d % 2:
        raise ValueError(f"rope: x {tuple(x.shape)} with tables {tuple(cos.shape)}, {tuple(sin.shape)}")
    _lib().apr_rope_neox(x.data_ptr(), t, heads, d, cos.data_ptr(), sin.data_ptr())
    return x


def attend_one(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    pos: int,
    window: int,
    scale: float,
) -> torch.Tensor:
    """One token's attention (glue.c): stores ``k_new``/``v_new`` ``[kv_heads, d]`` at ``pos`` of ``keys``/
    ``values`` ``[kv_heads, capacity, d]``, then attends q ``[kv_heads * rep, d]`` over positions
    ``max(0, pos - window + 1) .. pos`` (``window`` 0: all); returns ``[kv_heads * rep, d]``. The cache may be
    float32 or float16 (the new key and value are stored rounded to it)."""
    return _attend(q, k_new, v_new, keys, values, pos, 1, window, scale, single=True)


def attend_run(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    pos0: int,
    window: int,
    scale: float,
) -> torch.Tensor:
    """The attention of ``n`` consecutive new positions ``pos0 .. pos0 + n - 1`` of one sequence (glue.c,
    tiled): stores ``k_new``/``v_new`` ``[n, kv_heads, d]`` at their positions of ``keys``/``values``
    ``[kv_heads, capacity, d]``, then each row's ``q [n, kv_heads * rep, d]`` attends over its window up to
    its own position; returns ``[n, kv_heads * rep, d]``, row i bit-identical to ``attend_one`` at ``pos0 + i``.
    The cache may be float32 or float16."""
    return _attend(q, k_new, v_new, keys, values, pos0, q.shape[0], window, scale, single=False)


def _attend(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    pos0: int,
    n: int,
    window: int,
    scale: float,
    *,
    single: bool,
) -> torch.Tensor:
    """attend_one (``single``: one row, ``apr_attend_one``, the kernel decode steps run) and attend_run (n rows,
    ``apr_attend_run``): the same checks, then the C call. Both entry points stay bound, so the tests hold
    the prompt kernel's rows to the decode kernel's bits."""
    what = "attend_one" if single else "attend_run"
    _check_f32(what, q, k_new, v_new)
    half = _check_kv(what, keys, values)
    kv_heads, capacity, d = keys.shape
    heads = q.numel() // (n * d) if n else 0
    if (
        values.shape != keys.shape
        or n < 1
        or q.numel() != n * heads * d
        or k_new.numel() != n * kv_heads * d
        or v_new.numel() != n * kv_heads * d
        or heads % kv_heads
        or not 0 <= pos0 <= capacity - n
    ):
        where = f"position {pos0}" if single else f"positions {pos0}+{n}"
        raise ValueError(f"{what}: q {tuple(q.shape)}, cache {tuple(keys.shape)}, {where}")
    out = torch.empty(*(() if single else (n,)), heads, d, dtype=torch.float32)
    pointers = (q.data_ptr(), k_new.data_ptr(), v_new.data_ptr(), keys.data_ptr(), values.data_ptr())
    shape = (kv_heads, heads // kv_heads, capacity, d)
    lib = _lib()
    if single:
        status = lib.apr_attend_one(*pointers, *shape, pos0, window, scale, out.data_ptr(), int(half))
    else:
        status = lib.apr_attend_run(*pointers, *shape, pos0, n, window, scale, out.data_ptr(), int(half))
    if status and single:
        raise MemoryError(f"no memory for attention over {pos0 + 1} positions")
    if status:
        raise MemoryError(f"no memory for the attention of {n} rows over {pos0 + n} positions")
    return out


# GGML types dequant.c reads (its enum repeats quant's numbers, which are ggml.h's).
DEQUANT_TYPES = (quant.Q4_0, quant.Q4_1, quant.Q8_0, quant.Q4_K, quant.Q6_K)


def dequantize_rows(raw: np.ndarray, ggml_type: int, k: int, ids: torch.Tensor) -> torch.Tensor:
    """float32 ``[len(ids), k]``: rows ``ids`` of the GGML-block matrix ``raw`` (uint8 ``[rows, row_bytes]``,
    C-contiguous, a memory map is fine), bit-identical to ``quant.dequantize_raw`` of those rows."""
    flat = ids.reshape(-1).to(device="cpu", dtype=torch.int64).contiguous()
    if raw.ndim != 2 or raw.dtype != np.uint8 or not raw.flags.c_contiguous:
        raise ValueError(f"dequantize_rows: raw {raw.dtype} {raw.shape} is not C-contiguous uint8 rows")
    out = torch.empty(flat.numel(), k, dtype=torch.float32)
    status = _lib().apr_dequantize_rows(
        raw.ctypes.data, raw.shape[0], raw.shape[1], ggml_type, k, flat.data_ptr(), flat.numel(), out.data_ptr()
    )
    if status == -2:
        raise IndexError(f"token ids {flat.tolist()} outside 0..{raw.shape[0] - 1}")
    if status:
        raise ValueError(f"dequantize_rows: GGML type {ggml_type} with {raw.shape[1]} bytes a row of {k}")
    return out


@dataclass(frozen=True)
class LayerShape:
    """The sizes and constants of one decoder layer (``window`` 0: global attention; ``gelu``: tanh-GELU, else SiLU)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    window: int
    gelu: bool
    eps: float
    attn_scale: float


class CacheRows:
    """The caches of a decode batch as apr_decode_layer takes them: per row the base of its
    ``[layers, kv_heads, capacity, head_dim]`` keys and values (all float32 or all float16: ``half``), its
    capacity and its new token's position."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], positions: list[int]) -> None:
        rows = len(keys)
        if not rows or len(values) != rows or len(positions) != rows:
            raise ValueError("a decode batch needs one cache and one position per row")
        self.half = _check_kv("decode caches", *keys, *values)
        if any(not 0 <= p < k.shape[2] for k, p in zip(keys, positions)):
            raise ValueError(f"positions {positions} outside the caches")
        self.rows = rows
        self.keys = (ctypes.c_void_p * rows)(*[k.data_ptr() for k in keys])
        self.values = (ctypes.c_void_p * rows)(*[v.data_ptr() for v in values])
        self.capacity = (ctypes.c_int64 * rows)(*[k.shape[2] for k in keys])
        self.positions = (ctypes.c_int64 * rows)(*positions)


class DecodeLayer:
    """One decoder layer for layer.c's apr_decode_layer: packed weights, norm scales and sizes in one struct.

    ``weights`` maps LAYER_WEIGHTS names to (PackedLinear, float32 bias or None, input features);
    ``norms`` maps LAYER_NORMS names to float32 scales (offset added) or None. The struct holds raw
    addresses, so this object keeps every tensor it points to."""

    def __init__(
        self,
        weights: dict[str, tuple[PackedLinear, torch.Tensor | None, int]],
        norms: dict[str, torch.Tensor | None],
        shape: LayerShape,
    ) -> None:
        self.shape = shape
        self._keep: list[torch.Tensor] = []
        layer = _Layer()
        for name in LAYER_WEIGHTS:
            linear, bias, k = weights[name]
            setattr(layer, name, linear.weight(k, bias))
            self._keep.extend(linear.tensors)
            if bias is not None:
                self._keep.append(bias)
        for name in LAYER_NORMS:
            scale = norms.get(name)
            if scale is not None:
                _check_f32(name, scale)
                self._keep.append(scale)
            setattr(layer, name, None if scale is None else scale.data_ptr())
        if norms.get("input_norm") is None or norms.get("pre_mlp_norm") is None:
            raise ValueError("a decoder layer needs its input and pre-MLP norms")
        layer.eps, layer.attn_scale = shape.eps, shape.attn_scale
        for name in LAYER_SIZES:
            setattr(layer, name, int(getattr(shape, name)))
        self._layer = layer
        self._ref = ctypes.byref(layer)

    def __call__(self, index: int, x: torch.Tensor, caches: CacheRows, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Applies the layer to ``x [rows, hidden]`` in place, writing each row's new key/value to its cache."""
        _check_f32("decode layer", x, cos, sin)
        shape = self.shape
        rope = (caches.rows, shape.head_dim)
        if x.shape != (caches.rows, shape.hidden) or cos.shape != rope or sin.shape != rope:
            raise ValueError(f"decode layer: x {tuple(x.shape)}, rope {tuple(cos.shape)} for {caches.rows} rows")
        status = _lib().apr_decode_layer(
            self._ref,
            index,
            x.data_ptr(),
            caches.rows,
            caches.keys,
            caches.values,
            caches.capacity,
            caches.positions,
            cos.data_ptr(),
            sin.data_ptr(),
            int(caches.half),
            torch.get_num_threads(),
        )
        _raise_for_layer_status(status)


def _raise_for_layer_status(status: int) -> None:
    if status:
        raise (
            MemoryError("no memory for a decode layer")
            if status == -1
            else RuntimeError(f"apr_decode_layer failed ({status})")
        )


class DecodeStack:
    """All the decoder layers of a model for layer.c's apr_decode_layers: one native call a step.

    ``local[l]``: layer l takes the local RoPE tables (gemma3's sliding layers). Layer l writes layer l of
    the caches. Keeps the DecodeLayers (and so every tensor their structs point to)."""

    def __init__(self, layers: list[DecodeLayer], local: list[bool]) -> None:
        if not layers or len(local) != len(layers):
            raise ValueError("a decode stack needs one local/global flag per layer")
        self.layers, self.shape = layers, layers[0].shape
        self._structs = (ctypes.POINTER(_Layer) * len(layers))(*[ctypes.pointer(layer._layer) for layer in layers])
        self._local = (ctypes.c_uint8 * len(layers))(*map(int, local))

    def __call__(
        self,
        x: torch.Tensor,
        caches: CacheRows,
        global_tables: tuple[torch.Tensor, torch.Tensor],
        local_tables: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """Applies every layer to ``x [rows, hidden]`` in place, writing each row's new keys/values to its cache."""
        tables = (*global_tables, *local_tables)
        _check_f32("decode stack", x, *tables)
        rope = (caches.rows, self.shape.head_dim)
        if x.shape != (caches.rows, self.shape.hidden) or any(table.shape != rope for table in tables):
            raise ValueError(f"decode stack: x {tuple(x.shape)}, rope {tuple(tables[0].shape)} for {caches.rows} rows")
        status = _lib().apr_decode_layers(
            self._structs,
            self._local,
            len(self.layers),
            x.data_ptr(),
            caches.rows,
            caches.keys,
            caches.values,
            caches.capacity,
            caches.positions,
            *(table.data_ptr() for table in tables),
            int(caches.half),
            torch.get_num_threads(),
        )
        _raise_for_layer_status(status)


def _fp16_scales(values: torch.Tensor, what: str) -> torch.Tensor:
    """float32 scales as fp16 bits, refusing values that fp16 would round by more than MAX_SCALE_ROUNDING."""
    rounded = values.to(torch.float16)
    nonzero = values != 0
    error = ((rounded.float() - values).abs() / values.abs().clamp_min(1e-38))[nonzero]
    if error.numel() and not float(error.max()) <= MAX_SCALE_ROUNDING:  # also catches inf and NaN
        worst = values[nonzero].abs()
        raise ScaleRangeError(f"{what} do not fit fp16 (|scale| {float(worst.min()):.3g}..{float(worst.max()):.3g})")
    return rounded.view(torch.int16)


def pack_q4(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> dict[str, torch.Tensor]:
    """q4 layout of ``w = scale * q + offset`` (q int [N, K] in 0..15; scale, offset [N, K/32]); K % 32 == 0."""
    n, k = q.shape
    if k % BLOCK or scale.shape != (n, k // BLOCK) or offset.shape != scale.shape:
        raise ValueError(
            f"q4 packing needs K % 32 == 0 and [N, K/32] scales; got {tuple(q.shape)}, {tuple(scale.shape)}"
        )
    kpad = padded(k)
    qp = torch.zeros(n, kpad, dtype=torch.uint8)
    qp[:, :k] = q.to(torch.uint8)
    pairs = qp.view(n, kpad // 64, 2, 32)
    packed = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, kpad // 2)
    sp = torch.zeros(n, kpad // BLOCK, dtype=torch.float32)
    op = torch.zeros_like(sp)
    sp[:, : k // BLOCK] = scale
    op[:, : k // BLOCK] = offset
    return {
        "q4": packed.contiguous(),
        "q4_scale": _fp16_scales(sp, "q4 scales").contiguous(),
        "q4_offset": _fp16_scales(op, "q4 offsets").contiguous(),
    }


def pack_q4k(parts) -> dict[str, torch.Tensor]:
    """q4k layout of a Q4_K matrix (``quant.Q4KParts``): its values, sub-block scales and fp16 d/dmin as stored."""
    n, k = parts.q.shape
    if k % 256:
        raise ValueError(f"q4k packing needs K % 256 == 0, got {k}")
    pairs = parts.q.to(torch.uint8).view(n, k // 64, 2, 32)
    packed = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, k // 2)
    # Per group of 4 blocks: their 4 sc then their 4 m; per super-block: (d, dmin) as fp16 bits.
    scmin = torch.stack([parts.sc.view(n, k // 128, 4), parts.m.view(n, k // 128, 4)], dim=2).reshape(n, k // 16)
    dm = torch.stack([parts.d.view(n, k // 256), parts.dmin.view(n, k // 256)], dim=2).reshape(n, k // 128)
    return {
        "q4k": packed.contiguous(),
        "q4k_scmin": scmin.to(torch.uint8).contiguous(),
        "q4k_dm": dm.contiguous().view(torch.int16),
    }


def _tiled_values(layout: str, q: torch.Tensor) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """(tiles, super-blocks, values viewed [tile, row, super-block, block, half, v, i], their low nibbles
    packed [tile, super-block, block, v, row, i]): what both tiled layouts store first (qgemm.c)."""
    n, k = q.shape
    if k % 256 or n % 8:
        raise ValueError(f"{layout} packing needs K % 256 == 0 and N % 8 == 0, got {n} x {k}")
    tiles, sbs = n // 8, k // 256
    values = q.to(torch.uint8).view(tiles, 8, sbs, 8, 2, 4, 4)
    low = values & 0xF
    nibbles = (low[:, :, :, :, 0] | (low[:, :, :, :, 1] << 4)).permute(0, 2, 3, 4, 1, 5)
    return tiles, sbs, values, nibbles


def pack_q4k8(parts) -> dict[str, torch.Tensor]:
    """q4k8 layout of a Q4_K matrix (``quant.Q4KParts``): q4k's values with 8 output rows interleaved (qgemm.c)."""
    tiles, sbs, _, nibbles = _tiled_values("q4k8", parts.q)

    def by_row(values: torch.Tensor) -> torch.Tensor:
        """Per super-block, each position's 8 rows together, as bytes."""
        return (
            _rows_innermost(
                values.contiguous().view(torch.int16 if values.dtype == torch.float16 else torch.uint8), tiles, sbs
            )
            .contiguous()
            .view(torch.uint8)
        )

    head = torch.cat(
        [by_row(parts.d), by_row(parts.dmin), by_row(parts.sc.to(torch.uint8)), by_row(parts.m.to(torch.uint8))], dim=2
    )
    packed = torch.cat([head, nibbles.reshape(tiles, sbs, 1024)], dim=2)
    return {"q4k8": packed.reshape(tiles, sbs * TILE_BYTES["q4k8"]).contiguous()}


def _rows_innermost(values: torch.Tensor, tiles: int, sbs: int) -> torch.Tensor:
    """[N, sbs * per_sb] -> [tiles, sbs, per_sb * 8]: per super-block, each position's 8 rows together."""
    per_sb = values.shape[1] // sbs
    return values.reshape(tiles, 8, sbs, per_sb).permute(0, 2, 3, 1).reshape(tiles, sbs, per_sb * 8)


def pack_q6k8(parts) -> dict[str, torch.Tensor]:
    """q6k8 layout of a Q6_K matrix (``quant.Q6KParts``): its values as stored, 8 output rows interleaved."""
    tiles, sbs, q, nibbles = _tiled_values("q6k8", parts.q)
    top = (q >> 4).view(tiles, 8, sbs, 8, 2, 2, 2, 4)  # ..., half, h, v % 2, i
    highs = (
        top[:, :, :, :, 0, :, 0]
        | (top[:, :, :, :, 1, :, 0] << 2)
        | (top[:, :, :, :, 0, :, 1] << 4)
        | (top[:, :, :, :, 1, :, 1] << 6)
    ).permute(0, 2, 3, 4, 1, 5)  # tile, sb, block, h, row, i
    body = torch.cat([nibbles.reshape(tiles, sbs, 8, 128), highs.reshape(tiles, sbs, 8, 64)], dim=3)
    d = _rows_innermost(parts.d.half().view(torch.int16), tiles, sbs).contiguous().view(torch.uint8)
    sc = _rows_innermost(parts.sc.to(torch.int8), tiles, sbs).contiguous().view(torch.uint8)
    packed = torch.cat([d, sc, body.reshape(tiles, sbs, 1536)], dim=2)
    return {"q6k8": packed.reshape(tiles, sbs * TILE_BYTES["q6k8"]).contiguous()}


def pack_q8(q: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """q8 layout of ``w = scale * q`` (q int [N, K] in -128..127; scale [N, K/16]); K % 16 == 0."""
    n, k = q.shape
    if k % 16 or scale.shape != (n, k // 16):
        raise ValueError(
            f"q8 packing needs K % 16 == 0 and [N, K/16] scales; got {tuple(q.shape)}, {tuple(scale.shape)}"
        )
    kpad = padded(k)
    qp = torch.zeros(n, kpad, dtype=torch.int8)
    qp[:, :k] = q.to(torch.int8)
    sp = torch.zeros(n, kpad // 16, dtype=torch.float32)
    sp[:, : k // 16] = scale
    # Per group of 4 blocks: the 4 first-half scales, then the 4 second-half ones (the kernel's lane order).
    ordered = sp.view(n, kpad // KGROUP, 4, 2).transpose(2, 3).reshape(n, kpad // 16)
    return {"q8": qp.contiguous(), "q8_scale": _fp16_scales(ordered, "q8 scales").contiguous()}


def pack_q6(q: torch.Tensor, sc: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
    """q6 layout of a Q6_K matrix ``w = d * sc * (q - 32)``: q int [N, K] in 0..63, sc int8 [N, K/16],
    d [N, K/256] (fp16 values, as Q6_K stores them); K % 256 == 0."""
    n, k = q.shape
    if k % 256 or sc.shape != (n, k // 16) or d.shape != (n, k // 256):
        raise ValueError(
            f"q6 packing needs K % 256 == 0, [N, K/16] scales and [N, K/256] d; "
            f"got {tuple(q.shape)}, {tuple(sc.shape)}, {tuple(d.shape)}"
        )
    kpad = padded(k)
    qp = torch.full((n, kpad), 32, dtype=torch.uint8)  # padding is q = 32, i.e. weight 0
    qp[:, :k] = q.to(torch.uint8)
    groups = qp.view(n, kpad // KGROUP, 4, 32)
    nibbles = groups & 0xF
    pairs = torch.cat([nibbles[:, :, 0] | (nibbles[:, :, 1] << 4), nibbles[:, :, 2] | (nibbles[:, :, 3] << 4)], dim=2)
    top = groups >> 4
    highs = top[:, :, 0] | (top[:, :, 1] << 2) | (top[:, :, 2] << 4) | (top[:, :, 3] << 6)
    packed = torch.cat([pairs, highs], dim=2).reshape(n, kpad // 4 * 3)
    scp = torch.zeros(n, kpad // 16, dtype=torch.int8)
    scp[:, : k // 16] = sc.to(torch.int8)
    ordered = scp.view(n, kpad // KGROUP, 4, 2).transpose(2, 3).reshape(n, kpad // 16)
    dp = torch.zeros(n, kpad // KGROUP, dtype=torch.float32)
    dp[:, : k // KGROUP] = d.float().repeat_interleave(256 // KGROUP, dim=1)
    return {"q6": packed.contiguous(), "q6_sc": ordered.contiguous(), "q6_d": _fp16_scales(dp, "q6 d").contiguous()}


def int8_groups_of_16(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per 16 along K for tensors with no exact integer form: ``w ≈ q * scale``.

    The scales are fp16 values (what the layout stores) chosen before rounding q, so tiny groups in
    fp16's subnormal range lose only a little resolution instead of being refused."""
    n, k = weight.shape
    w = weight.float().view(n, k // 16, 16)
    scale = (w.abs().amax(dim=-1) / 127.0).half().float()
    # Groups too small for any fp16 scale (max|w| < 4e-6) get the smallest one; their q stay in range.
    scale = torch.where((scale == 0) & (w.abs().amax(dim=-1) > 0), torch.tensor(2.0**-24), scale)
    q = torch.where(scale[..., None] > 0, w / scale.clamp_min(2.0**-24)[..., None], 0.0).round_().clamp_(-127, 127)
    return q.to(torch.int8).view(n, k), scale


def variant() -> str | None:
    """The name of the kernel build in use (avx2, avxvnni, avx512vnni, amx), None when the kernels are unavailable."""
    lib, _ = _library()
    if lib is None:
        return None
    code = lib.apr_qgemm_variant()
    return next(v.name for v in VARIANTS if v.code == code)


def describe() -> str:
    lib, reason = _library()
    if lib is None:
        return f"unavailable: {reason}"
    name = variant()
    # Only avx512vnni and amx have 512-bit kernels (the tiled layouts: two rows a vector, or at one row two tiles;
    # the attention).
    vectors = {
        "avx512vnni": "512-bit q4k8/q6k8 products and attention, else 256-bit",
        "amx": "AMX tiles for q4k8/q6k8 products of 32+ rows, 512-bit below and attention, else 256-bit",
    }.get(name or "", "256-bit")
    ahead = lib.apr_qgemm_stream_ahead()
    prefetch = f"weights prefetched {ahead} B ahead" if ahead else "no weight prefetch"
    return f"{name} q4/q4k/q4k8/q6/q6k8/q8 (int8 activations; {vectors}; {prefetch}), one call per decode layer"
