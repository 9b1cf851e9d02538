"""Resolve `device: auto|cpu|cuda|cuda:N` and `dtype: auto|fp32|fp16|bf16` to torch objects."""

from __future__ import annotations

from pathlib import Path

import torch

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmuls (AMX tiles or AVX512-BF16), where bf16 beats fp32 ~4x."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "amx_tile", "avx512_bf16"))


def resolve_device(device: str) -> torch.device:
    """Pick the torch device; `auto` means the first GPU when one is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but no CUDA device is visible")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Pick the compute dtype; `auto` means fp16 on GPU, bf16 on a bf16-capable CPU, fp32 otherwise."""
    if dtype != "auto":
        if dtype == "fp16" and device.type == "cpu":
            raise ValueError("dtype=fp16 is not supported on the CPU; use bf16 or fp32")
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """The config spelling (fp32/fp16/bf16) of a torch dtype."""
    return {v: k for k, v in _DTYPES.items()}[dtype]
