"""Where models run and in which arithmetic."""

from __future__ import annotations

import os

import torch

from .errors import BertkitError

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def default_device() -> torch.device:
    """This process's GPU under torchrun (``LOCAL_RANK``), else the only GPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def native_bf16() -> bool:
    """True where bf16 matmuls run in hardware: a GPU, or a CPU with AVX512-BF16 / AMX."""
    if torch.cuda.is_available():
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(compute: str) -> bool:
    """Whether inference runs under bfloat16 autocast for ``--compute`` float32/bfloat16/auto."""
    if compute not in COMPUTE_DTYPES:
        raise BertkitError(f"unknown --compute {compute!r} ({', '.join(COMPUTE_DTYPES)})")
    return compute == "bfloat16" or (compute == "auto" and native_bf16())


def module_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
