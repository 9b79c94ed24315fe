"""Models: the registry (names → entry functions and weights), the built-in models, the QARV
network and its layers.

Imports run one way: ``zoo`` → ``registry`` → ``weights``; ``qarv`` → ``layers`` and
:mod:`lvae.coding`. Importing this package imports no torch: the network classes (``QARV``,
``QARVConfig``, ``LatentVariableBlock``, ``QResVAE``, ``QResConfig``) and ``CodingModel``, the
model contract every network provides (:mod:`lvae.coding.contract`), load on first access.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .registry import (
    Weights,
    get_model,
    list_models,
    load_model,
    model_lambdas,
    model_weights,
    packaged_models,
    register_model,
)
from .zoo import qarv_base, qarv_small, qarv_tiny, qres17m, qres34m, qres_tiny

__all__ = [
    "Weights", "get_model", "load_model", "list_models", "model_weights", "packaged_models", "register_model",
    "model_lambdas", "qarv_base", "qarv_small", "qarv_tiny", "QARV", "QARVConfig", "LatentVariableBlock",
    "qres34m", "qres17m", "qres_tiny", "QResVAE", "QResConfig", "CodingModel", "RDModel", "RDConfig",
]

_NETWORK = {"QARV": ".qarv", "QARVConfig": ".qarv", "LatentVariableBlock": ".qarv", "QResVAE": ".qres",
            "QResConfig": ".qres", "CodingModel": "..coding.contract", "RDModel": ".rd", "RDConfig": ".rd"}

if TYPE_CHECKING:  # mypy: every built-in network provides the model contract
    from ..coding.contract import CodingModel
    from .qarv import QARV
    from .qres import QResVAE

    _NETWORKS: tuple[type[CodingModel], ...] = (QARV, QResVAE)


def __getattr__(name: str) -> Any:
    """PEP 562: the network classes load on first access."""
    if name in _NETWORK:
        return getattr(importlib.import_module(_NETWORK[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
