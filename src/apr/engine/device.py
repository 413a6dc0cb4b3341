"""Device, dtype and thread choices: resolve `auto`, validate what the user asked for."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

from apr.engine.types import KV_CACHES, KvCache
from apr.engine.weights import KernelFamily
from apr.errors import AprError
from apr.machine import ThreadChoice, choose_threads
from apr.settings import current

DeviceChoice = Literal["auto", "cpu", "cuda"]
# fast: the quickest kernels for the device (int8 activations on apr's CPU kernels, bf16 elsewhere);
# exact: every tensor dequantized to float32, float32 activations: the reference numerics, which
# log-likelihood evaluations (lm-eval's loglikelihood tasks) need.
Numerics = Literal["fast", "exact"]
NUMERICS: tuple[Numerics, ...] = ("fast", "exact")
KV_CACHE_DTYPES: dict[KvCache, torch.dtype] = {"f32": torch.float32, "f16": torch.float16}
DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "f32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise AprError("--device cuda: no CUDA device is available to torch here; use --device cpu or auto")
        return torch.device("cuda")
    raise AprError(f"--device {choice!r}: expected auto, cpu or cuda")


@dataclass(frozen=True)
class Precision:
    """What ``--dtype`` resolved to: activation dtype, packed or dense weights, and which kernels run them."""

    dtype: torch.dtype
    packed: bool
    kernels: KernelFamily
    note: str = ""  # why auto did not pick the fastest kernels, when it did not


def resolve_precision(choice: str | torch.dtype | None, device: torch.device, numerics: str = "fast") -> Precision:
    """``auto`` (default): on CPU apr's native AVX2 kernels with float32 activations where they build,
    else PyTorch's packed kernels with bf16; on CUDA every tensor dequantized to dense bf16 on the device
    (a small model's bf16 weights fit any data-centre GPU, and cuBLAS bf16 beats the int4/int8 weight-only
    kernels at decode batch sizes). ``bf16``/``fp16``: PyTorch's packed kernels (int4 tinygemm, int8).
    ``fp32``: every tensor dequantized, no packed kernel (the exact reference mode).
    ``numerics`` ``exact`` is that fp32 mode whatever the device; with any ``choice`` but auto/fp32 it is refused."""
    if numerics not in NUMERICS:
        raise AprError(f"--numerics {numerics!r}: expected one of {', '.join(NUMERICS)}")
    if numerics == "exact":
        named = choice if isinstance(choice, str) else None if choice is None else str(choice).removeprefix("torch.")
        if named is not None and named.lower() not in ("auto", "fp32", "float32", "f32"):
            raise AprError(
                f"--numerics exact computes in float32 with every tensor dequantized; "
                f"--dtype {named} contradicts it (drop --dtype)"
            )
        return Precision(torch.float32, False, "torch")
    if choice is None or (isinstance(choice, str) and choice.lower() == "auto"):
        if device.type == "cpu":
            from apr.engine import native

            if native.available():
                return Precision(torch.float32, True, "native")
            reason = f"native kernels unavailable: {native.unavailable_reason()}"
            return Precision(torch.bfloat16, True, "torch", reason)
        return Precision(torch.bfloat16, False, "torch")
    if isinstance(choice, torch.dtype):
        dtype = choice
    else:
        try:
            dtype = DTYPES[choice.lower()]
        except KeyError:
            raise AprError(f"--dtype {choice!r}: expected one of auto, bf16, fp16, fp32") from None
    if dtype == torch.float16 and device.type == "cpu":
        raise AprError("--dtype fp16 is not supported on CPU (its kernels are slow there); use auto, bf16 or fp32")
    return Precision(dtype, dtype != torch.float32, "torch")


def resolve_kv_cache(
    choice: str, device: torch.device, precision: Precision, numerics: str, compile: bool
) -> torch.dtype:
    """The KV cache dtype ``--kv-cache`` asks for, refused in one line before any weight is read where the
    engine could not hold it: f16 needs apr's native CPU kernels, eager (not torch.compile's trace)."""
    if choice not in KV_CACHES:
        raise AprError(f"--kv-cache {choice!r}: expected one of {', '.join(KV_CACHES)}")
    dtype = KV_CACHE_DTYPES[choice]  # type: ignore[index]
    if dtype == torch.float32:
        return dtype
    if device.type != "cpu":
        raise AprError(
            f"--kv-cache f16 runs on apr's native CPU kernels only; on {device.type} the cache holds the "
            "activations' dtype (use --kv-cache f32 or --device cpu)"
        )
    if numerics == "exact":
        raise AprError("--kv-cache f16 contradicts --numerics exact (float32 reference numerics); drop one of them")
    if precision.kernels != "native":
        named = next(name for name, known in DTYPES.items() if known == precision.dtype)  # bf16, fp32 or fp16
        why = precision.note or f"--dtype {named} runs PyTorch's kernels"
        raise AprError(f"--kv-cache f16 needs apr's native CPU kernels ({why}); use --kv-cache f32")
    if compile:
        raise AprError("--kv-cache f16 runs on the eager native layers, not the traced step; drop --compile")
    return dtype


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count: the one asked for, else OMP_NUM_THREADS (torch applied it at start),
    else the free cores of this machine (``apr.machine.choose_threads``); return the count in use."""
    if threads is not None:
        if threads < 1:
            raise AprError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    elif current().omp_threads is None:
        torch.set_num_threads(default_thread_choice().threads)
    return torch.get_num_threads()


@lru_cache(maxsize=1)
def default_thread_choice() -> ThreadChoice:
    """The machine's default thread count, chosen once per process (from the load when the engine first loads)."""
    return choose_threads()
