"""The model registry: one name table for every model the library can build.

``@register_model`` records an entry function under its own name, with the metadata of its
pretrained weights (if any); :func:`get_model` builds a model and optionally loads weights.

Imports run one way: this module uses :mod:`.weights` (metadata, look-up, loading), never the
reverse. It imports no torch: the built-in entry functions (:mod:`.zoo`) import the network
only when called, so ``lvae --help`` and ``lvae models`` stay light.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .weights import Weights

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["Weights", "register_model", "get_model", "load_model", "list_models", "model_weights", "packaged_models"]


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    weights: Weights | None


_MODELS: dict[str, _Entry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, weights: Weights | None = None):
    """Register ``fn`` under ``fn.__name__``; usable as ``@register_model`` or ``@register_model(weights=...)``."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        known = _MODELS.get(name)
        # A module imported twice (e.g. run as a script and imported) registers the same function again.
        same = known is not None and (known.fn.__module__, known.fn.__qualname__) == (f.__module__, f.__qualname__)
        if known is not None and not same:
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
    model.name = name  # type: ignore[assignment]  # nn.Module types attributes as tensors or modules
    if pretrained is not False and pretrained is not None:
        from .weights import load_pretrained

        load_pretrained(model, name, entry.weights, pretrained, offline_models=packaged_models())
    return model


def load_model(
    name: str,
    weights: str | None = None,
    *,
    model_args: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    coding: bool = True,
) -> nn.Module:
    """:func:`get_model` as the command lines and the trainer use it (the one wrapper).

    ``weights``: None for the model's own weights (published or packaged; an error if it has
    none), ``'random'`` for random weights, else a checkpoint path. Bad ``model_args`` raise a
    one-line ``ValueError``. With ``coding``: evaluation mode, ready for
    ``compress``/``decompress``; else training mode. The model is moved to ``device``.
    """
    pretrained: bool | str = True if weights is None else (False if weights == "random" else str(weights))
    try:
        model = get_model(name, pretrained=pretrained, **(model_args or {}))
    except TypeError as exc:
        raise ValueError(f"bad model arguments for {name!r}: {exc}") from None
    return model.train(not coding).to(device)
