"""Device, dtype and thread choices: resolve `auto`, validate what the user asked for."""

from __future__ import annotations

from typing import Literal

import torch

from apr.errors import AprError

DeviceChoice = Literal["auto", "cpu", "cuda"]
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32,
          "f32": torch.float32, "fp16": torch.float16, "float16": torch.float16}


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


def resolve_dtype(choice: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Activation dtype: bf16 by default (the fast path of the packed kernels on CPU and of CUDA)."""
    if choice is None:
        return torch.bfloat16
    if isinstance(choice, torch.dtype):
        return choice
    try:
        dtype = DTYPES[choice.lower()]
    except KeyError:
        raise AprError(f"--dtype {choice!r}: expected one of bf16, fp16, fp32") from None
    if dtype == torch.float16 and device.type == "cpu":
        raise AprError("--dtype fp16 is not supported on CPU (its kernels are slow there); use bf16 or fp32")
    return dtype


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count when asked; return the count in use."""
    if threads is not None:
        if threads < 1:
            raise AprError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
