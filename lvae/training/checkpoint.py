"""Run folders and checkpoints: atomic writes, RNG states, and finding what to resume.

``last.pt`` holds everything needed to continue a run; ``best.pt`` and ``last_ema.pt`` hold the
model alone, as ``{'model': state_dict}`` (the published shape), so that
``lvae.get_model(name, pretrained='runs/<run>/last_ema.pt')`` loads them.
"""
from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..io import atomic_output

if TYPE_CHECKING:
    from ..coding.contract import CodingModel

__all__ = [
    "atomic_save",
    "rng_state",
    "set_rng_state",
    "find_resume_checkpoint",
    "load_training_checkpoint",
    "param_checksum",
    "LAST",
    "BEST",
    "LAST_EMA",
]

LAST, BEST, LAST_EMA = "last.pt", "best.pt", "last_ema.pt"
_REQUIRED = ("model", "optimizer", "iteration", "config", "model_name", "model_args")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`lvae.io.atomic_output` (a temporary file beside ``path``,
    renamed into place): a reader (or a crash) never sees a half-written checkpoint."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    """This process's random-number-generator states, in a form ``weights_only`` loading accepts."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def find_resume_checkpoint(resume: str, runs_dir: str | os.PathLike) -> Path:
    """``resume`` may be a ``last.pt`` file, a run folder, or a run name under ``runs_dir``."""
    p = Path(resume).expanduser()
    candidates = [p] if p.suffix == ".pt" else [p / LAST, Path(runs_dir) / resume / LAST]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"nothing to resume at {resume!r}: looked for {' and '.join(str(c) for c in candidates)}"
    )


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``last.pt`` (safely: ``weights_only=True``, on the CPU) and check its fields."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many types (pickle, zip, EOF errors)
        raise CheckpointError(f"cannot read training checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(ckpt, Mapping) or any(k not in ckpt for k in _REQUIRED):
        missing = [k for k in _REQUIRED if not isinstance(ckpt, Mapping) or k not in ckpt]
        raise CheckpointError(
            f"{path} is not a training checkpoint of train-var-rate.py (missing: {', '.join(missing)}); "
            "to start from a model's weights use --weights"
        )
    return dict(ckpt)


def param_checksum(model: nn.Module | CodingModel) -> str:
    """SHA-256 (first 16 hex digits) of all parameter bytes: equal on ranks whose weights are identical.

    NOTE: copies every parameter to the CPU; call it at checkpoint time, not every step.
    """
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
