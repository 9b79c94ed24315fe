"""lvae: learned lossy image compression with QARV (Duan et al., TPAMI 2023).

``import lvae`` is light: it loads the model registry and the error classes, not torch. Submodules
(``lvae.io``, ``lvae.metrics``, ``lvae.models``...) load on first attribute access, and the
model code on the first :func:`get_model`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    BitstreamError,
    CheckpointError,
    ImageReadError,
    LvaeError,
    PrecisionUnavailableError,
    WeightsUnavailableError,
)
from .models import get_model, list_models, register_model

__all__ = [
    "__version__",
    "get_model",
    "list_models",
    "register_model",
    "LvaeError",
    "BitstreamError",
    "CheckpointError",
    "ImageReadError",
    "PrecisionUnavailableError",
    "WeightsUnavailableError",
]


def __getattr__(name: str):
    """PEP 562: ``lvae.io``, ``lvae.metrics``... import the submodule on first access."""
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")  # the import also sets it as an attribute here
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the submodule exists but needs something missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    import pkgutil

    return sorted(set(globals()) | {m.name for m in pkgutil.iter_modules(__path__)})
