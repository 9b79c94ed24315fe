"""The model registry: one name table for every model the library can build.

``@register_model`` records an entry function under its own name, with the metadata of its
pretrained weights (if any); :func:`get_model` builds a model and optionally loads weights.

The built-in models are known before their code is imported: :data:`_BUILTIN` holds their
names, the module that registers them and their weights' metadata, so :func:`list_models` and
:func:`model_weights` (and with them ``lvae --help`` and ``lvae models``) import neither torch
nor the model code. The first :func:`get_model` of a built-in imports that module, whose
``@register_model`` replaces the placeholder with the real entry function. This module imports
no torch; it imports :mod:`lvae.hub` (never the reverse).
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .hub import Weights

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["Weights", "register_model", "get_model", "list_models", "model_weights", "packaged_models"]

# -- the built-in models, known without importing them ----------------------------------------------
# Keep in step with the @register_model decorators in lvae/models/__init__.py:
# tests/test_startup_imports.py checks that both say the same.
BUILTIN_MODULE = "lvae.models"
QARV_PAPER = "Duan et al., QARV: Quantization-Aware ResNet VAE for Lossy Image Compression, TPAMI 2023"
_BUILTIN: dict[str, Weights | None] = {
    "qarv_base": Weights(
        filename="qarv_base-2022-dec-12.pt",
        url="https://huggingface.co/duanzh0/my-model-weights/resolve/main/qarv_base-2022-dec-12.pt",
        license="published by the QARV authors under their own terms (not covered by lvae's MIT license)",
        paper=QARV_PAPER,
    ),
    "qarv_small": Weights(
        filename="qarv_small.pt",
        package_file="data/weights/qarv_small.pt",
        sha256="17af9d684243fd4210339f0ddf6b1d78fc119aeee04da8c0e249d951d8b406fc",
        license="MIT, like the lvae code (trained by the lvae project)",
        paper=QARV_PAPER,
    ),
    "qarv_tiny": None,
}


def import_quietly(module: str):
    """``importlib.import_module`` without CompressAI's import-time deprecation warning."""
    with warnings.catch_warnings():
        # CompressAI 1.2.8 warns at import time that torch.jit.script is deprecated: not our users' concern.
        warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
        return importlib.import_module(module)


@dataclass(frozen=True)
class _Deferred:
    """The built-in model ``name`` before its code is imported: importing ``module`` registers it."""

    module: str
    name: str

    def load(self) -> Callable[..., nn.Module]:
        package = import_quietly(self.module)
        registered = _MODELS.get(self.name)
        if registered is not None and not isinstance(registered.fn, _Deferred):
            return registered.fn
        fn = getattr(package, self.name, None)  # registered before (and the entry replaced since)
        if fn is None:
            raise ValueError(f"importing {self.module} did not register the built-in model {self.name!r}")
        return fn

    def __call__(self, **kwargs) -> nn.Module:
        return self.load()(**kwargs)

    def stands_for(self, fn: Callable) -> bool:
        """Whether ``fn`` is this model's entry function (defined in ``module`` or below it)."""
        where = getattr(fn, "__module__", None) or ""
        in_module = where == self.module or where.startswith(self.module + ".")
        return in_module and getattr(fn, "__name__", None) == self.name


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    weights: Weights | None


_MODELS: dict[str, _Entry] = {name: _Entry(_Deferred(BUILTIN_MODULE, name), w) for name, w in _BUILTIN.items()}


def register_model(fn: Callable[..., nn.Module] | None = None, *, weights: Weights | None = None):
    """Register ``fn`` under ``fn.__name__``; usable as ``@register_model`` or ``@register_model(weights=...)``."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS:
            known = _MODELS[name].fn
            if known is not f and not (isinstance(known, _Deferred) and known.stands_for(f)):
                raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = _Entry(f, weights)
        return f

    return wrap(fn) if fn is not None else wrap


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def _entry(name: str) -> _Entry:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def model_weights(name: str) -> Weights | None:
    """The pretrained-weights metadata of a registered model (None if it has none)."""
    return _entry(name).weights


def packaged_models() -> list[str]:
    """Registered models whose weights ship inside the package (usable offline)."""
    return [n for n in list_models() if (w := model_weights(n)) is not None and w.package_file]


def get_model(name: str, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    ``pretrained``: False for random weights; True for the model's published or packaged weights
    (local hub cache first, then download); or a path to a checkpoint file. ``kwargs`` go to the
    entry function (architecture arguments).
    """
    entry = _entry(name)
    model = entry.fn(**kwargs)
    model.name = name
    if pretrained is not False and pretrained is not None:
        from .hub import load_pretrained

        load_pretrained(model, name, entry.weights, pretrained, offline_models=packaged_models())
    return model
