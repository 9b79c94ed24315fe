"""Models: the registry (names → entry functions and weights), the built-in models, the QARV
network and its layers.

Imports run one way: ``zoo`` → ``registry`` → ``weights``; ``qarv`` → ``layers`` and
:mod:`lvae.coding`. Importing this package imports no torch: the network classes (``QARV``,
``QARVConfig``, ``LatentVariableBlock``) load on first access.
"""
from __future__ import annotations

import importlib
from typing import Any

from .registry import Weights, get_model, list_models, load_model, model_weights, packaged_models, register_model
from .zoo import qarv_base, qarv_small, qarv_tiny

__all__ = [
    "Weights", "get_model", "load_model", "list_models", "model_weights", "packaged_models", "register_model",
    "qarv_base", "qarv_small", "qarv_tiny", "QARV", "QARVConfig", "LatentVariableBlock",
]

_NETWORK = {"QARV", "QARVConfig", "LatentVariableBlock"}


def __getattr__(name: str) -> Any:
    """PEP 562: the network classes load on first access."""
    if name in _NETWORK:
        return getattr(importlib.import_module(".qarv", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
