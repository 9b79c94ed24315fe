"""The model registry: one name table for every model the library can build.

``@register_model`` records an entry function under its own name, with the metadata of its
pretrained weights (if any); :func:`get_model` builds a model and optionally loads weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

__all__ = ["Weights", "register_model", "get_model", "list_models", "model_weights"]


@dataclass(frozen=True)
class Weights:
    """Where a model's pretrained weights come from, and on what terms.

    ``url`` + ``filename``: downloaded into ``torch.hub.get_dir()/checkpoints``.
    ``package_file``: a file shipped inside the ``lvae`` package (no network needed).
    """

    filename: str
    url: str | None = None
    package_file: str | None = None
    sha256: str | None = None
    license: str = ""
    paper: str = ""


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    weights: Weights | None


_MODELS: dict[str, _Entry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, weights: Weights | None = None):
    """Register ``fn`` under ``fn.__name__``; usable as ``@register_model`` or ``@register_model(weights=...)``."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _MODELS and _MODELS[name].fn is not f:
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

        load_pretrained(model, name, entry.weights, pretrained)
    return model
