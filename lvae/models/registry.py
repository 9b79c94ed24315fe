"""The model registry: one name table for every model the library can build.

``@register_model`` records an entry function under its own name, with the metadata of its
pretrained weights (if any); :func:`get_model` builds a model and optionally loads weights.

Imports run one way: this module uses :mod:`.weights` (metadata, look-up, loading), never the
reverse. It imports no torch: the built-in entry functions (:mod:`.zoo`) import the network
only when called, so ``lvae --help`` and ``lvae models`` stay light.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..utils.text import format_lambdas
from .weights import Weights

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = [
    "Weights", "register_model", "get_model", "load_model", "list_models", "model_weights", "model_lambdas",
    "default_member", "packaged_models",
]

# The weights of a model: one set, or (a fixed-λ family) one set per member λ.
WeightsSpec = Weights | Callable[[float], Weights] | None


@dataclass(frozen=True)
class _Entry:
    fn: Callable[..., nn.Module]
    weights: WeightsSpec
    lambdas: tuple[float, ...] | None = None  # a fixed-λ family: the members with published weights


_MODELS: dict[str, _Entry] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    weights: WeightsSpec = None,
    lambdas: Sequence[float] | None = None,
):
    """Register ``fn`` under ``fn.__name__``; usable as ``@register_model`` or ``@register_model(weights=...)``.

    A fixed-λ family (one network per λ, as QRes-VAE) gives ``lambdas``, the λ of its published
    members, and ``weights`` as a function of λ; its entry function takes ``lmb`` (with a default,
    one of ``lambdas``) and builds the member for it.
    """
    members: tuple[float, ...] | None = None
    if lambdas is not None:
        members = tuple(sorted(float(v) for v in lambdas))
        if not members or any(not (math.isfinite(v) and v > 0) for v in members) or len(set(members)) != len(members):
            raise ValueError(f"lambdas must be distinct positive numbers, got {lambdas!r}")
        if isinstance(weights, Weights):
            raise ValueError("a fixed-λ family gives its weights as a function of λ (one set per member)")
    elif weights is not None and not isinstance(weights, Weights):
        raise ValueError("weights per λ need lambdas= (the family's members)")

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        known = _MODELS.get(name)
        # A module imported twice (e.g. run as a script and imported) registers the same function again.
        same = known is not None and (known.fn.__module__, known.fn.__qualname__) == (f.__module__, f.__qualname__)
        if known is not None and not same:
            raise ValueError(f"a model named {name!r} is already registered")
        if members is not None and "lmb" not in inspect.signature(f).parameters:
            raise ValueError(f"the entry function of the fixed-λ family {name!r} must take lmb")
        _MODELS[name] = _Entry(f, weights, members)
        return f

    return wrap(fn) if fn is not None else wrap


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def _entry(name: str) -> _Entry:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def model_lambdas(name: str) -> tuple[float, ...] | None:
    """The λ of a fixed-λ family's published members, ascending; None for a variable-rate model."""
    return _entry(name).lambdas


def default_member(name: str) -> float | None:
    """The λ a fixed-λ family builds when none is asked for (its entry function's default)."""
    entry = _entry(name)
    if entry.lambdas is None:
        return None
    default = inspect.signature(entry.fn).parameters["lmb"].default
    return None if default is inspect.Parameter.empty else float(default)


def _member_lambda(name: str, entry: _Entry, lmb: Any) -> float:
    """``lmb`` as one of the family's published λ (a ValueError listing them otherwise)."""
    assert entry.lambdas is not None
    try:
        value = float(lmb)
    except (TypeError, ValueError):
        value = math.nan
    for v in entry.lambdas:
        if math.isfinite(value) and abs(value - v) <= 1e-6 * v:
            return v
    raise ValueError(
        f"{name} has published weights for λ ∈ {format_lambdas(entry.lambdas)}, not λ={lmb!r} "
        "(another λ needs weights of your own: train one, or pretrained=PATH)"
    )


def model_weights(name: str, lmb: float | None = None) -> Weights | None:
    """The pretrained-weights metadata of a registered model (None if it has none); for a fixed-λ
    family, of its member ``lmb`` (default: the default member)."""
    entry = _entry(name)
    if entry.lambdas is None or entry.weights is None:
        return entry.weights if isinstance(entry.weights, Weights) else None
    assert callable(entry.weights)
    member = _member_lambda(name, entry, default_member(name) if lmb is None else lmb)
    return entry.weights(member)


def packaged_models() -> list[str]:
    """Registered models whose weights ship inside the package (usable offline)."""
    return [n for n in list_models() if (w := model_weights(n)) is not None and w.package_file]


def get_model(name: str, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    ``pretrained``: False for random weights; True for the model's published or packaged weights
    (local hub cache first, then download); or a path to a checkpoint file. ``kwargs`` go to the
    entry function (architecture arguments).

    A fixed-λ family (:func:`model_lambdas`) builds one member: ``lmb`` chooses it (the authors'
    call: ``get_model('qres34m', lmb=64, pretrained=True)``); with ``pretrained=True`` it must be
    one of the published λ, and the model can then reach its siblings (``model.member(λ)``,
    which loads their published weights on first use), so that it codes, decodes and evaluates
    at every published λ.
    """
    entry = _entry(name)
    weights = entry.weights if isinstance(entry.weights, Weights) else None
    if entry.lambdas is not None and pretrained is True:
        kwargs["lmb"] = _member_lambda(name, entry, kwargs.get("lmb", default_member(name)))
        weights = model_weights(name, kwargs["lmb"])
    model = entry.fn(**kwargs)
    model.name = name  # type: ignore[assignment]  # nn.Module types attributes as tensors or modules
    if pretrained is not False and pretrained is not None:
        from .weights import load_pretrained

        load_pretrained(model, name, weights, pretrained, offline_models=packaged_models())
    if entry.lambdas is not None and pretrained is True:
        link = getattr(model, "link_family", None)
        if link is not None:
            link(entry.lambdas, lambda lmb: get_model(name, pretrained=True, **{**kwargs, "lmb": lmb}))
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
