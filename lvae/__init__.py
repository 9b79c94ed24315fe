"""lvae: learned lossy image compression with QARV (Duan et al., TPAMI 2023)."""
from __future__ import annotations

__version__ = "0.1.0"

import warnings

with warnings.catch_warnings():
    # CompressAI 1.2.8 warns at import time that torch.jit.script is deprecated: not our users' concern.
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    from . import models  # noqa: F401  (registers the models)
from .errors import BitstreamError, CheckpointError, ImageReadError, LvaeError, WeightsUnavailableError
from .registry import get_model, list_models, register_model

__all__ = [
    "__version__",
    "get_model",
    "list_models",
    "register_model",
    "LvaeError",
    "BitstreamError",
    "CheckpointError",
    "ImageReadError",
    "WeightsUnavailableError",
]
