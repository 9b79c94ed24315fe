"""Arithmetic settings pinned while coding, so that encoder and decoder compute alike.

Reduced-precision float32 matmuls (TF32 on NVIDIA GPUs, bf16 through oneDNN on CPUs, chosen by
``torch.set_float32_matmul_precision``) move prior scales by ~1e-3, far more than the repair of
:mod:`lvae.coding.portable` is built for; cuDNN's autotuner may pick a different algorithm per
call. While coding, full float32 and deterministic algorithms are used, and the caller's
settings are restored afterwards.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["coding_arithmetic"]


@contextlib.contextmanager
def coding_arithmetic(device: torch.device | str) -> Iterator[None]:
    device = torch.device(device)
    try:
        precision: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:
        # torch ≥ 2.9 refuses to answer once the caller mixed the legacy TF32 flags with the new
        # per-backend API; the legacy flags below still pin CUDA, and the CPU's default is float32.
        precision = None
    cuda_state = None
    if device.type == "cuda":
        cudnn = torch.backends.cudnn
        cuda_state = (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark)
        torch.backends.cuda.matmul.allow_tf32 = False
        cudnn.allow_tf32 = False
        cudnn.deterministic = True
        cudnn.benchmark = False
    if precision is not None and precision != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if precision is not None and precision != "highest":
            torch.set_float32_matmul_precision(precision)
        if cuda_state is not None:
            cudnn = torch.backends.cudnn
            (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark) = cuda_state
