"""Process-group set-up for ``torchrun`` (any number of processes and nodes) or one plain process.

Under ``torchrun`` the environment holds ``RANK`` (global), ``LOCAL_RANK`` (on this node: picks the
CUDA device) and ``WORLD_SIZE``. NCCL is used on CUDA, gloo on the CPU. The primary process,
which alone writes files and logs, is global rank 0.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from .config import ConfigError, TrainingError

__all__ = ["DistContext", "setup_distributed", "cleanup_distributed", "under_torchrun"]

T = TypeVar("T")

# Long enough for rank 0 to write a large checkpoint while the other ranks wait in the next
# collective; the validation itself is spread over all ranks and never leaves one waiting long.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    # -- collectives that are no-ops in a single process ---------------------------------------
    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (``sum`` or ``max``) of a tensor on :attr:`device`."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_primary(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and share its result; if it fails, every rank raises, so none hangs."""
        if not self.distributed:
            return fn()
        result, error = None, None
        if self.is_primary:
            try:
                result = fn()
            except Exception as exc:  # whatever it is, the other ranks must hear of it
                expected = isinstance(exc, (ValueError, OSError, RuntimeError))
                error = str(exc) if expected else f"{type(exc).__name__}: {exc}"
        error = self.broadcast_object(error)
        if error is not None:
            raise TrainingError(error if self.is_primary else f"rank 0 failed: {error}")
        return cast(T, self.broadcast_object(result))  # fn returned on rank 0: result is set


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def _pick_device(requested: str | None, local_rank: int, distributed: bool) -> torch.device:
    """The training device: ``requested``, or CUDA when there is one and the CPU otherwise.

    A device that was asked for and is not there (``--device cuda`` without CUDA, a GPU index past
    the last) is a :class:`ConfigError` (exit status 2), raised before anything is built.
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested!r} is not a device name (use cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} was asked for, but CUDA is not available here (use --device cpu)")
        if distributed:
            if device.index is not None:
                raise ConfigError("under torchrun give --device cuda (LOCAL_RANK picks the GPU), not cuda:N")
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"no CUDA device {device.index}: this node has {torch.cuda.device_count()}")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"--device {requested!r}: training runs on cpu or cuda")
    return device


def setup_distributed(device: str | None = None) -> DistContext:
    """Join the process group when started by torchrun; otherwise describe one plain process."""
    if not under_torchrun():
        return DistContext(0, 0, 1, _pick_device(device, 0, distributed=False))
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    dev = _pick_device(device, local_rank, distributed=True)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    return DistContext(rank, local_rank, world_size, dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
