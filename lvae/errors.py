"""Exception types that callers may need to tell apart."""
from __future__ import annotations

__all__ = ["LvaeError", "CheckpointError", "WeightsUnavailableError", "BitstreamError", "ImageReadError",
           "PrecisionUnavailableError"]


class LvaeError(Exception):
    """Base class of the errors raised by lvae itself."""


class CheckpointError(LvaeError, ValueError):
    """A checkpoint file cannot be read, or does not fit the model it is loaded into."""


class WeightsUnavailableError(LvaeError, RuntimeError):
    """Pretrained weights are neither on disk nor downloadable; the message says where to put them."""


class BitstreamError(LvaeError, ValueError):
    """A compressed file is truncated, corrupted, foreign, or made by another model."""


class ImageReadError(LvaeError, ValueError):
    """A file that should be an image cannot be read as one."""


class PrecisionUnavailableError(LvaeError, ValueError):
    """A reduced-precision encoder was asked for where it cannot run (e.g. bfloat16 on a CPU whose
    oneDNN has no bfloat16 linears, or on a GPU): the model keeps its float32 encoder."""
